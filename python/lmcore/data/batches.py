"""Batches: nanoGPT-style seeded random windows (``BatchSampler``) whose generator state
round-trips through JSON, so a resumed run draws exactly the batches it would have drawn; batches
of fixed, already packed windows (``WindowSampler``, chat fine-tuning); and the in-memory split of
a small corpus's ids."""

from __future__ import annotations

from typing import Any

import numpy as np

from lmcore.data.corpus import TRAIN_FRACTION, Corpus, DataError, split_index
from lmcore.tokenizer import Tokenizer


def encode_corpus(corpus: Corpus | str, tokenizer: Tokenizer) -> np.ndarray:
    """Encode a (small) corpus to token ids at once; training streams and caches them (lmcore.data.tokens)."""
    return tokenizer.encode(corpus.text if isinstance(corpus, Corpus) else corpus)


def train_val_split(ids: np.ndarray, train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """First ``train_fraction`` of the ids for training, the rest for validation (as nanoGPT)."""
    n = split_index(len(ids), train_fraction)
    return ids[:n], ids[n:]


class BatchSampler:
    """Seeded random (x, y) windows, drawn exactly like nanoGPT's ``get_batch``.

    Use one instance per split so evaluation never advances the training stream.
    """

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
        if len(data) < block_size + 1:
            raise DataError(
                f"data has {len(data)} tokens, need at least block_size+1 = {block_size + 1} to draw a batch"
            )
        self.data = data
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.batches_drawn = 0
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._offsets = np.arange(block_size, dtype=np.int64)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(x, y)``, int64 arrays of shape (batch_size, block_size); y is x shifted by one."""
        starts = self._rng.integers(0, len(self.data) - self.block_size, size=self.batch_size)
        idx = starts[:, None] + self._offsets
        x = self.data[idx].astype(np.int64)
        y = self.data[idx + 1].astype(np.int64)
        self.batches_drawn += 1
        return x, y

    def state_dict(self) -> dict[str, Any]:
        state = self._rng.bit_generator.state
        inner = state["state"]
        # PCG64's 128-bit integers are stored as hex strings: many JSON readers
        # (not Python's) silently round integers beyond 2**53.
        return {
            "seed": self.seed,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "data_len": int(len(self.data)),
            "batches_drawn": self.batches_drawn,
            "bit_generator": state["bit_generator"],
            "pcg_state": hex(inner["state"]),
            "pcg_inc": hex(inner["inc"]),
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for key in ("block_size", "batch_size", "data_len"):
            mine = int(len(self.data)) if key == "data_len" else getattr(self, key)
            if sd.get(key) != mine:
                raise DataError(f"sampler state has {key}={sd.get(key)}, this sampler has {mine}")
        if sd.get("bit_generator") != "PCG64":
            raise DataError(f"sampler state is for bit generator {sd.get('bit_generator')!r}, expected 'PCG64'")
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(sd["pcg_state"], 16), "inc": int(sd["pcg_inc"], 16)},
            "has_uint32": int(sd["has_uint32"]),
            "uinteger": int(sd["uinteger"]),
        }
        self.seed = sd["seed"]
        self.batches_drawn = int(sd["batches_drawn"])


class WindowSampler(BatchSampler):
    """Seeded random batches of fixed windows: ``x`` and ``y`` (windows, block_size), the packed
    conversations of ``--sft`` (``y`` holds ``IGNORE_ID`` where nothing is learned). Each row of a
    batch is a window drawn uniformly, with replacement, as ``BatchSampler`` draws its starts; the
    generator and its state (``state_dict``) are ``BatchSampler``'s, ``data_len`` the number of
    windows, so a checkpoint keeps and restores it alike."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> None:
        if x.ndim != 2 or x.shape != y.shape:
            raise ValueError(f"windows need x and y of one shape (windows, block_size), got {x.shape} and {y.shape}")
        if len(x) == 0:
            raise DataError("no windows to draw a batch from")
        super().__init__(np.zeros(x.shape[1] + 1, np.int64), x.shape[1], batch_size, seed)
        self.data, self.targets = x, y  # (data_len: the number of windows)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rng.integers(0, len(self.data), size=self.batch_size)
        self.batches_drawn += 1
        return self.data[rows].astype(np.int64), self.targets[rows].astype(np.int64)
