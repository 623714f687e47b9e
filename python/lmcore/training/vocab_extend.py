"""Growing a trained model's vocabulary: new rows for new token ids (the chat markers appended by
``chat_template.add_chat_tokens``), so that ``--init-from`` can fine-tune an old checkpoint.

The rows of every vocabulary-sized weight (the token embedding ``transformer.wte.weight``, which
is also the output projection when it is tied, and ``lm_head.weight`` if a model has its own)
keep their values; each new row starts as the mean of the old rows. The mean is the vector in
the span of what the model already knows that is typical of no token in particular: a new token
enters with an average embedding, and its logit starts near the average logit (where a random
row of the init's size would be close to zero), so the first fine-tuning steps move it into
place instead of starting from an outlier.
"""

from __future__ import annotations

import numpy as np

VOCAB_WEIGHTS = ("transformer.wte.weight", "lm_head.weight")


def extend_vocab(params: dict[str, np.ndarray], old_vocab_size: int, new_vocab_size: int) -> dict[str, np.ndarray]:
    """A copy of ``params`` (name -> array) whose vocabulary weights have ``new_vocab_size`` rows."""
    if new_vocab_size < old_vocab_size:
        raise ValueError(f"a vocabulary can only grow: {old_vocab_size} -> {new_vocab_size}")
    if "transformer.wte.weight" not in params:
        raise ValueError("no transformer.wte.weight among the parameters: not an lmcore GPT")
    out = dict(params)
    for name in VOCAB_WEIGHTS:
        if name not in params:
            continue
        w = params[name]
        if w.ndim != 2 or w.shape[0] != old_vocab_size:
            raise ValueError(f"{name} has shape {w.shape}, expected ({old_vocab_size}, d_model)")
        mean = w.mean(axis=0, dtype=np.float64).astype(w.dtype)
        out[name] = np.concatenate([w, np.tile(mean, (new_vocab_size - old_vocab_size, 1))])
    return out
