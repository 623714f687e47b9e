"""Text generation from a `Model`: temperature, top-k and top-p (nucleus) sampling, with or
without the key/value cache.

Both paths see the same context window: the last ``block_size`` tokens at most; when a new token
no longer fits, the window restarts at the last ``block_size // 2`` tokens (the cache is refilled
once, so each token still costs O(T) on average). Hence cached and uncached generation compute
the same logits and, for the same seed, pick the same tokens.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lmcore import Model


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """One token id per row of ``logits`` (B, V). Temperature 0 means greedy."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        drop = np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p
        sorted_p[drop] = 0.0
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_p, axis=-1)
        probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(len(probs))[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), probs.shape[-1] - 1)


def validate_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top-p must be in (0, 1], got {top_p}")


def generate(model: Model, prompt: np.ndarray, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, use_cache: bool = True,
             on_token: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Continue each row of ``prompt`` (B, P) by ``max_new_tokens`` tokens; returns (B, P + N).

    Uses its own generator seeded with ``seed``: generation never touches training state.
    """
    validate_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max-new-tokens must not be negative, got {max_new_tokens}")
    tokens = np.array(prompt, dtype=np.int64, ndmin=2)
    if tokens.shape[1] == 0:
        raise ValueError("the prompt must not be empty")
    rng = np.random.default_rng(seed)
    block = model.config["block_size"]
    start = max(0, tokens.shape[1] - block)

    def fill_cache() -> np.ndarray:
        model.kv_start(tokens.shape[0])
        for i in range(start, tokens.shape[1]):
            logits = model.kv_push(tokens[:, i])
        return logits

    def full_forward() -> np.ndarray:
        return model.forward(tokens[:, start:])[0][:, -1, :]

    logits = fill_cache() if use_cache else full_forward()
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, rng, temperature, top_k, top_p)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        if on_token is not None:
            on_token(nxt)
        refill = tokens.shape[1] - start > block
        if refill:
            start = tokens.shape[1] - max(1, block // 2)
        if not use_cache:
            logits = full_forward()
        elif refill:
            logits = fill_cache()
        else:
            logits = model.kv_push(nxt)
    return tokens
