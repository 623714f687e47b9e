"""Loss only on the replies, through the Model API: targets equal to ``lmcore.IGNORE_ID`` (-100)
count for nothing in ``train_step`` and ``forward``; a batch with none counted is refused by
``train_step`` (an update on no data would still move the weights) and has loss 0 in ``forward``."""

from __future__ import annotations

import numpy as np
import pytest

import lmcore
from gradcheck import assert_model_grads_match, perturb_weights

TINY = dict(vocab_size=11, d_model=8, n_head=2, n_layer=2, block_size=6, dtype="float64")


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, np.where(targets < 0, 0, targets)[..., None], -1)[..., 0]


def test_forward_loss_is_the_mean_over_counted_targets():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (3, 6)), rng.integers(0, 11, (3, 6))
    y[0] = lmcore.IGNORE_ID  # a fully ignored row
    y[1, ::2] = lmcore.IGNORE_ID
    m = lmcore.Model(**TINY)
    logits, loss = m.forward(x, y)
    counted = y != lmcore.IGNORE_ID
    assert loss == pytest.approx(_nll(logits, y)[counted].mean(), rel=1e-12)
    _, none = m.forward(x, np.full_like(y, lmcore.IGNORE_ID))
    assert none == 0.0


def test_masked_model_gradient_matches_finite_differences():
    """The whole model with a random mask (a fully ignored row too): train_step's gradients are
    the derivatives of forward's masked loss."""
    rng = np.random.default_rng(1)
    m = lmcore.Model(**TINY, seed=3, weight_decay=0.0)
    perturb_weights(m, rng)
    x, y = rng.integers(0, 11, (3, 5)), rng.integers(0, 11, (3, 5))
    y[rng.random((3, 5)) < 0.5] = lmcore.IGNORE_ID
    y[1], y[0, 0] = lmcore.IGNORE_ID, 4
    assert_model_grads_match(m, x, y)


def test_ignored_targets_get_no_gradient_at_the_logits():
    """Perturbing the logits' inputs at an ignored position's target changes nothing: the loss of
    a batch equals the loss of the batch with that target changed to any other ignored value."""
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 11, (1, 6)), rng.integers(0, 11, (1, 6))
    m = lmcore.Model(**TINY)
    y[0, 3:] = lmcore.IGNORE_ID
    _, full = m.forward(x, y)
    _, first = m.forward(x[:, :3], y[:, :3])  # causal: positions 0-2 do not see 3-5
    assert full == pytest.approx(first, rel=1e-12)


def test_no_counted_target_and_bad_ids_are_refused():
    m = lmcore.Model(**TINY)
    x = np.zeros((2, 4), np.int64)
    with pytest.raises(lmcore.LmcoreError, match="ignore id -100"):
        m.train_step(x, np.full((2, 4), lmcore.IGNORE_ID), 1e-3)
    assert m.step == 0
    with pytest.raises(lmcore.LmcoreError, match="out of range"):
        m.train_step(np.full((2, 4), lmcore.IGNORE_ID), x, 1e-3)  # an input id is never ignored
    with pytest.raises(lmcore.LmcoreError, match="out of range"):
        m.train_step(x, np.full((2, 4), -1), 1e-3)  # only -100 is the ignore id
    g = lmcore.Graph("float64")
    with pytest.raises(lmcore.LmcoreError, match="token id -100"):
        g.embedding(g.ids(np.array([lmcore.IGNORE_ID])), g.tensor(np.ones((3, 2))))
