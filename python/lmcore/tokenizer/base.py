"""What both tokenizers share: id arrays of the smallest dtype, checked ids, and special tokens
(strings with ids of their own after the ordinary vocabulary: the chat markers of
``conversation/template.py``). ``encode`` never produces a special token (text that spells one gets
ordinary tokens); only ``special_id`` and the chat template do. A tokenizer without specials has
exactly the dict and fingerprint it had before they existed, so old checkpoints and token caches
stay valid; ``with_specials`` makes the extended one (another fingerprint)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

# A lone surrogate: legal in a Python str, not in UTF-8 (so not in a BPE, a JSON file or a special).
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def id_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    # uint16 halves the memory of an encoded corpus for any vocab that fits.
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def checked_ids(ids: Iterable[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """``ids`` as a 1-D integer array, every id in range (or a ValueError naming the first bad one)."""
    arr = ids if isinstance(ids, np.ndarray) else np.array(list(ids), dtype=np.int64)
    if arr.size == 0:
        return arr.reshape(0).astype(np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"decode expects a 1-D sequence of integer ids, got {arr.dtype} {arr.shape}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise ValueError(f"token id {int(arr[np.argmax(bad)])} is out of range for vocab_size {vocab_size}")
    return arr


def checked_specials(specials: Iterable[str]) -> tuple[str, ...]:
    out = tuple(specials)
    if any(not isinstance(t, str) or not t or LONE_SURROGATE.search(t) for t in out) or len(set(out)) != len(out):
        raise ValueError(f"special tokens must be distinct, non-empty, valid Unicode strings, got {list(out)[:8]!r}")
    return out


def specials_from_dict(d: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    specials, template = d.get("specials", []), d.get("chat_template")
    if not isinstance(specials, list) or not (template is None or isinstance(template, str)):
        raise ValueError("tokenizer dict: 'specials' must be a list of strings and 'chat_template' a string")
    return checked_specials(specials), template


class SpecialTokens:
    """What both tokenizers share about special tokens: ids after the ordinary vocabulary."""

    _specials: tuple[str, ...]
    chat_template: str | None
    base_vocab_size: int

    @property
    def specials(self) -> tuple[str, ...]:
        """The special tokens, in id order (ids ``base_vocab_size`` and up)."""
        return self._specials

    def special_id(self, token: str) -> int:
        """The id of a special token (a KeyError names the known ones)."""
        try:
            return self.base_vocab_size + self._specials.index(token)
        except ValueError:
            raise KeyError(f"{token!r} is not a special token of this tokenizer "
                           f"(it has {list(self._specials)})") from None

    def _set_specials(self, specials: Iterable[str], chat_template: str | None, base_vocab_size: int) -> None:
        self._specials = checked_specials(specials)
        self.chat_template = chat_template
        self.base_vocab_size = base_vocab_size

    def _with_specials_fingerprint(self, base: str) -> str:
        """The plain fingerprint ``base`` when there are no specials; otherwise one that also covers them."""
        if not self._specials and self.chat_template is None:
            return base
        extra = json.dumps({"base": base, "specials": self._specials, "chat_template": self.chat_template},
                           separators=(",", ":"))
        return hashlib.sha256(extra.encode("utf-8")).hexdigest()

    def _specials_dict(self) -> dict[str, Any]:
        # Absent, not empty, when unused: an old tokenizer's dict is unchanged.
        if not self._specials and not self.chat_template:
            return {}
        return {"specials": list(self._specials), "chat_template": self.chat_template}

    def _specials_after(self, specials: Iterable[str]) -> tuple[str, ...]:
        """This tokenizer's specials followed by those of ``specials`` it lacks (ids never move)."""
        return self._specials + tuple(t for t in dict.fromkeys(specials) if t not in self._specials)

