"""Packing templated conversations into training windows, with the loss on the replies only.

A window is ``block_size + 1`` tokens: ``x`` its first ``block_size``, ``y`` its last, as in
pretraining. ``y[j]`` is ``IGNORE_ID`` (-100, not counted by the engine's cross-entropy) unless the
token it names is one to learn (an assistant reply's content or its ``<|end|>``).

Packing is greedy and in order: whole conversations go into the current window while they fit;
one that does not fit starts the next window, and the rest of the current one is padded (``x``
with ``pad_id``, ``y`` ignored). So the model sees, before any token, its own conversation and
possibly earlier *whole* conversations of the same window (attention is causal over the window;
the engine has no per-document mask), never a part of another one, and no counted target is a
token of another conversation: the first token of a conversation is never a counted target
(it is a role marker, and the packer ignores it explicitly, whatever the mask says).
``one_per_window=True`` gives every conversation a window of its own (no other conversation
in view, at the cost of padding).

A conversation longer than a window is cut into windows of its own, each starting where the
previous one's targets ended (consecutive windows share one token, so every target is in
exactly one window); the later pieces lack the conversation's beginning as context. Windows
with no counted target are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from lmcore._core import IGNORE_ID
from lmcore.conversation.template import ChatTokens


def pack_windows(conversations: Iterable[ChatTokens], block_size: int, pad_id: int,
                 one_per_window: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(x, y)`` pairs of int64 arrays of ``block_size`` ids each (see the module's docstring)."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    n = block_size + 1
    ids = np.full(n, pad_id, np.int64)
    targets = np.full(n, IGNORE_ID, np.int64)  # targets[k]: what predicting token k counts as
    used = 0

    def flush() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal used
        if used and (targets[1:] != IGNORE_ID).any():
            yield ids[:-1].copy(), targets[1:].copy()
        ids.fill(pad_id)
        targets.fill(IGNORE_ID)
        used = 0

    for conv in conversations:
        if len(conv.ids) != len(conv.learn):
            raise ValueError(f"a conversation has {len(conv.ids)} ids but {len(conv.learn)} learn flags")
        if len(conv.ids) == 0:
            continue
        counted = np.where(conv.learn, conv.ids, IGNORE_ID)
        counted[0] = IGNORE_ID  # a conversation's first token is never predicted from the one before
        if used and (one_per_window or used + len(conv.ids) > n):
            yield from flush()
        if len(conv.ids) <= n - used:
            ids[used:used + len(conv.ids)] = conv.ids
            targets[used:used + len(conv.ids)] = counted
            used += len(conv.ids)
            continue
        # Longer than a window: pieces of n tokens overlapping by one (each target counted once).
        for start in range(0, len(conv.ids) - 1, block_size):
            piece = slice(start, start + n)
            k = len(conv.ids[piece])
            ids[:k], targets[:k], used = conv.ids[piece], counted[piece], k  # targets[0] is no y
            yield from flush()
    yield from flush()


def pack(conversations: Iterable[ChatTokens], block_size: int, pad_id: int,
         one_per_window: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All windows at once: ``x`` and ``y`` of shape (windows, block_size)."""
    pairs = list(pack_windows(conversations, block_size, pad_id, one_per_window))
    if not pairs:
        return np.zeros((0, block_size), np.int64), np.zeros((0, block_size), np.int64)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
