"""What a run trains on, behind one interface (``TrainingData``): the token splits of a text
(``TextData``: random windows of the training tokens; validation on sampled windows or on every
window) or the packed conversations of chat fine-tuning (``ChatTraining``: random packed windows;
validation on every reply token). The loop, the evaluation and the command line use the interface
only; which of the two a run has is decided here, once, from ``--sft``."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np

import lmcore
from lmcore.cli import printed_warnings
from lmcore.config import RunConfig
from lmcore.conversation.finetuning import ChatData, ChatWindows, chat_windows, load_chats
from lmcore.conversation.template import END, apply_chat_template
from lmcore.data.batches import BatchSampler, WindowSampler
from lmcore.data.corpus import Corpus, DataError
from lmcore.data.datasets import resolve_corpus
from lmcore.data.tokens import TokenizedCorpus, tokenize
from lmcore.inference.sampling import generate
from lmcore.tokenizer import Tokenizer
from lmcore.training import evaluation
from lmcore.training.signals import Stop

Source = Corpus | ChatData  # what the data was read from (its name, sha256, source and n_chars)


class TrainingData(Protocol):
    def describe(self, tokenizer: Tokenizer) -> str:
        """The ``tokens: ...`` line the command prints."""

    def sampler(self, cfg: RunConfig) -> BatchSampler:
        """The training batches (their state is part of the checkpoint)."""

    def validation_loss(self, model: lmcore.Model, cfg: RunConfig, stop: Stop | None) -> float: ...

    def training_loss(self, model: lmcore.Model, cfg: RunConfig, stop: Stop | None) -> float:
        """The training split's loss on fixed batches (step 0's record, before any step)."""

    def bits_per_char(self, loss: float) -> float:
        """A validation loss in nats per token as bits per character of the validated text."""

    def sample(self, model: lmcore.Model, tokenizer: Tokenizer, n_tokens: int, seed: int) -> str | None:
        """What the command prints after ``--- sample ---`` at the end of a run (None: nothing)."""


@dataclass(frozen=True)
class TextData:
    tokens: TokenizedCorpus

    def describe(self, tokenizer: Tokenizer) -> str:
        t = self.tokens
        return (f"tokens: {tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size}; {len(t.train):,} training and "
                f"{len(t.val):,} validation tokens ({t.train_chars / len(t.train):.2f} chars/token)")

    def sampler(self, cfg: RunConfig) -> BatchSampler:
        return BatchSampler(self.tokens.train, cfg.block_size, cfg.batch_size, seed=cfg.seed)

    def validation_loss(self, model: lmcore.Model, cfg: RunConfig, stop: Stop | None) -> float:
        if cfg.eval_full:
            return evaluation.full_loss(model, self.tokens.val, cfg.block_size, cfg.batch_size, stop)
        return evaluation.estimate_loss(model, self.tokens.val, cfg, cfg.seed + 1, stop)

    def training_loss(self, model: lmcore.Model, cfg: RunConfig, stop: Stop | None) -> float:
        return evaluation.estimate_loss(model, self.tokens.train, cfg, cfg.seed + 2, stop)

    def bits_per_char(self, loss: float) -> float:
        return self.tokens.bits_per_char(loss)

    def sample(self, model: lmcore.Model, tokenizer: Tokenizer, n_tokens: int, seed: int) -> str | None:
        out = generate(model, tokenizer.encode("\n")[None, :], n_tokens, temperature=0.8, seed=seed)
        return tokenizer.decode(out[0]).rstrip()


@dataclass(frozen=True)
class ChatTraining:
    chats: ChatData
    windows: ChatWindows

    def describe(self, tokenizer: Tokenizer) -> str:
        c, w = self.chats, self.windows
        return (f"tokens: {tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size} (chat markers included); "
                f"conversations {len(c.train):,} training, {len(c.val):,} validation; windows {len(w.train_x):,} "
                f"training ({w.counted('train'):,} reply tokens), {len(w.val_x):,} validation "
                f"({w.counted('val'):,} reply tokens)")

    def sampler(self, cfg: RunConfig) -> BatchSampler:
        return WindowSampler(self.windows.train_x, self.windows.train_y, cfg.batch_size, seed=cfg.seed)

    def validation_loss(self, model: lmcore.Model, cfg: RunConfig, stop: Stop | None) -> float:
        # every validation reply token, always
        return evaluation.masked_loss(model, self.windows.val_x, self.windows.val_y, cfg.batch_size, stop)

    def training_loss(self, model: lmcore.Model, cfg: RunConfig, stop: Stop | None) -> float:
        # eval_iters fixed batches of windows, token-weighted
        windows = WindowSampler(self.windows.train_x, self.windows.train_y, cfg.batch_size, cfg.seed + 2)
        batches = [windows.next_batch() for _ in range(cfg.eval_iters)]
        return evaluation.masked_loss(model, np.concatenate([b[0] for b in batches]),
                                      np.concatenate([b[1] for b in batches]), cfg.batch_size, stop)

    def bits_per_char(self, loss: float) -> float:
        return self.windows.bits_per_char(loss)

    def sample(self, model: lmcore.Model, tokenizer: Tokenizer, n_tokens: int, seed: int) -> str | None:
        """The reply to the first validation conversation's opening (the messages before its first
        reply), up to the end-of-turn token."""
        messages = self.chats.val[0]["messages"]
        opening = messages[:next(i for i, m in enumerate(messages) if m["role"] == "assistant")]
        try:
            prompt = apply_chat_template(tokenizer, opening, add_generation_prompt=True).ids
        except ValueError:  # (a conversation the tokenizer cannot encode: no sample)
            return None
        out = generate(model, prompt[None, :], n_tokens, temperature=0.8, seed=seed)[0, len(prompt):]
        ends = (out == tokenizer.special_id(END)).nonzero()[0]
        reply = tokenizer.decode(out[:ends[0]] if len(ends) else out, skip_special=True)
        return "\n" + "\n".join(f"{m['role']}: {m['content']}" for m in opening) + f"\nassistant: {reply}"


def load_source(sft: bool, dataset: str | None, path: str | os.PathLike[str] | None, strict: bool) -> Source:
    """The text (or, ``sft``, the conversations) named by a dataset name or a path."""
    return load_chats(dataset, path, strict) if sft else resolve_corpus(dataset, path)


def tokenizer_text(source: Source) -> Corpus:
    """The text a new run's tokenizer is built from."""
    return source.text_corpus() if isinstance(source, ChatData) else source


def training_data(source: Source, tokenizer: Tokenizer, block_size: int, strict: bool) -> TrainingData:
    """``source`` tokenized (a text: cached) or templated and packed (conversations) for windows of
    ``block_size`` tokens; warnings are printed as they come."""
    if isinstance(source, ChatData):
        with printed_warnings():
            if source.skipped:
                warnings.warn(source.skipped, stacklevel=1)
            return ChatTraining(source, chat_windows(source, tokenizer, block_size, strict))
    with printed_warnings():
        tokens = tokenize(source, tokenizer)
    for split, ids in (("training", tokens.train), ("validation", tokens.val)):
        if len(ids) < block_size + 1:
            raise DataError(f"the {split} split has {len(ids)} tokens, fewer than one block of {block_size} + 1")
    return TextData(tokens)
