"""Text generation from a `Model`: temperature, top-k and top-p (nucleus) sampling, with or
without the key/value cache.

Both paths see the same context window: the last ``block_size`` tokens at most; when a new token
no longer fits, the window restarts at the last ``block_size // 2`` tokens (the cache is refilled
once, in one pass, so each token still costs O(T) on average). Hence cached and uncached
generation compute the same logits and, for the same seed, pick the same tokens.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lmcore import Model
from lmcore._core import sample, validate_sampling


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """One token id per row of ``logits`` (B, V). Temperature 0 means greedy (and draws nothing
    from ``rng``); otherwise one uniform number per row from ``rng`` picks the token (the engine's
    ``sample``: temperature, top-k, top-p, inverse CDF)."""
    logits = np.asarray(logits)
    u = rng.random(len(logits)) if temperature != 0 else np.zeros(len(logits))
    return sample(logits if logits.dtype in (np.float32, np.float64) else logits.astype(np.float64), u,
                  temperature, top_k, top_p)


def generate(model: Model, prompt: np.ndarray, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, use_cache: bool = True,
             on_token: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Continue each row of ``prompt`` (B, P) by ``max_new_tokens`` tokens; returns (B, P + N).

    Uses its own generator seeded with ``seed``: generation never touches training state.
    """
    validate_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max-new-tokens must not be negative, got {max_new_tokens}")
    prompt = np.array(prompt, dtype=np.int64, ndmin=2)
    rows, given = prompt.shape
    if given == 0:
        raise ValueError("the prompt must not be empty")
    rng = np.random.default_rng(seed)
    block = model.config["block_size"]
    try:
        tokens = np.empty((rows, given + max_new_tokens), dtype=np.int64)
    except (MemoryError, ValueError):
        raise MemoryError(f"out of memory: {rows} rows of {given} + {max_new_tokens} tokens need "
                          f"{rows * (given + max_new_tokens) * 8 / 2**30:,.1f} GiB; ask for fewer new tokens") from None
    tokens[:, :given] = prompt
    end = given  # tokens[:, :end] are known
    start = max(0, end - block)  # the window is tokens[:, start:end]

    def fill_cache() -> np.ndarray:
        model.kv_start(rows)
        return model.kv_push(tokens[:, start:end])  # the whole window in one pass

    def full_forward() -> np.ndarray:
        return model.forward(tokens[:, start:end])[0][:, -1, :]

    logits = fill_cache() if use_cache else full_forward()
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, rng, temperature, top_k, top_p)
        tokens[:, end] = nxt
        end += 1
        if on_token is not None:
            on_token(nxt)
        refill = end - start > block
        if refill:
            start = end - max(1, block // 2)
        if not use_cache:
            logits = full_forward()
        elif refill:
            logits = fill_cache()
        else:
            logits = model.kv_push(nxt)
    return tokens
