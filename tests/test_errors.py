"""Bad input gets a clear Python exception, never a crash: stale handles, foreign handles, wrong
shapes, wrong dtypes, out-of-range ids, empty arrays, NaN, nonsense configurations."""

from __future__ import annotations

import numpy as np
import pytest

import lmcore
from lmcore import LmcoreError

TINY = dict(vocab_size=11, d_model=8, n_head=2, n_layer=1, block_size=6)


def test_stale_handle_raises():
    g = lmcore.Graph("float64")
    x = g.tensor(np.ones((2, 3)))
    y = g.gelu(x)
    g.reset()
    g.tensor(np.zeros((2, 3)))  # takes the old slot
    with pytest.raises(LmcoreError, match="stale"):
        g.value(y)
    with pytest.raises(LmcoreError, match="stale"):
        g.gelu(x)
    with pytest.raises(LmcoreError, match="stale"):
        g.backward(y)


def test_handle_from_another_graph_raises():
    a, b = lmcore.Graph("float64"), lmcore.Graph("float64")
    x = a.tensor(np.ones(3))
    b.tensor(np.ones(3))
    with pytest.raises(LmcoreError, match="another graph"):
        b.value(x)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda g: g.linear(g.tensor(np.ones((2, 3))), g.tensor(np.ones((4, 5)))), "in-features"),
        (lambda g: g.linear(g.tensor(np.ones((2, 3))), g.tensor(np.ones((4, 3))), g.tensor(np.ones(5))), "bias"),
        (lambda g: g.add(g.tensor(np.ones(3)), g.tensor(np.ones(4))), "equal shapes"),
        (lambda g: g.attention(g.tensor(np.ones((1, 2, 6))), 4), "heads"),
        (lambda g: g.attention(g.tensor(np.ones((2, 6))), 1), r"\(B, T, 3C\)"),
        (lambda g: g.layernorm(g.tensor(np.ones((2, 3))), g.tensor(np.ones(2)), g.tensor(np.ones(3))), "gamma"),
        (lambda g: g.embedding(g.ids(np.array([0, 5])), g.tensor(np.ones((3, 2)))), "out of range"),
        (lambda g: g.cross_entropy(g.tensor(np.ones((2, 3))), g.ids(np.array([0, 3]))), "out of range"),
        (lambda g: g.cross_entropy(g.tensor(np.ones((2, 3))), g.ids(np.array([0, 1, 2]))), "targets"),
        (lambda g: g.dropout(g.tensor(np.ones(3)), 1.5), "dropout"),
        (lambda g: g.backward(g.tensor(np.ones(3))), "scalar"),
        (lambda g: g.backward(g.tensor(np.ones(3)), np.ones(4)), "gradient"),
        (lambda g: g.embedding(g.tensor(np.ones(2)), g.tensor(np.ones((3, 2)))), "integer"),
        (lambda g: g.tensor(np.ones((1, 1, 1, 1, 1))), "at most 4"),
    ],
)
def test_graph_op_errors(build, match):
    with pytest.raises(LmcoreError, match=match):
        build(lmcore.Graph("float64"))


def test_graph_dtype_errors():
    g = lmcore.Graph("float64")
    with pytest.raises(TypeError, match="float64"):
        g.tensor(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="integer"):
        g.ids(np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        g.tensor(np.ones((0, 3)))
    with pytest.raises(ValueError, match="empty"):
        g.ids(np.ones(0, np.int64))
    with pytest.raises(ValueError, match="dtype"):
        lmcore.Graph("float16")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(TINY, n_head=3), "does not divide"),
        (dict(TINY, d_model=0), "at least 1"),
        (dict(TINY, dropout=1.0), "dropout"),
        (dict(TINY, beta1=1.0), "betas"),
        (dict(TINY, eps=0.0), "eps"),
        (dict(TINY, vocab_size=1 << 40), "too large"),
    ],
)
def test_model_config_errors(kwargs, match):
    with pytest.raises(LmcoreError, match=match):
        lmcore.Model(**kwargs)


def test_negative_sizes_are_refused():
    with pytest.raises(OverflowError):
        lmcore.Model(**dict(TINY, d_model=-8))


def test_model_input_errors():
    m = lmcore.Model(**TINY)
    x = np.zeros((2, 4), np.int64)
    with pytest.raises(LmcoreError, match="out of range"):
        m.train_step(np.full((2, 4), 11), x, 1e-3)
    with pytest.raises(LmcoreError, match="out of range"):
        m.train_step(np.full((2, 4), -1), x, 1e-3)
    with pytest.raises(LmcoreError, match="block size"):
        m.train_step(np.zeros((2, 7), np.int64), np.zeros((2, 7), np.int64), 1e-3)
    with pytest.raises(ValueError, match="differs"):
        m.train_step(x, np.zeros((2, 3), np.int64), 1e-3)
    with pytest.raises(ValueError, match="2-D"):
        m.forward(np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="empty"):
        m.forward(np.zeros((0, 4), np.int64))
    with pytest.raises(TypeError, match="integer"):
        m.forward(np.zeros((2, 4)))
    with pytest.raises(LmcoreError, match="learning rate"):
        m.train_step(x, x, float("nan"))
    with pytest.raises(LmcoreError, match="no parameter"):
        m.get_param("nope")
    with pytest.raises(ValueError, match="shape"):
        m.set_param("transformer.wte.weight", np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        m.set_param("transformer.wte.weight", np.zeros((11, 8)))
    bad = m.get_param("transformer.wte.weight")
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        m.set_param("transformer.wte.weight", bad)
    assert m.step == 0  # nothing above changed the model


def test_non_finite_loss_is_refused_and_changes_nothing():
    m = lmcore.Model(**TINY)
    huge = m.get_param("transformer.wte.weight") * 0 + 3e38
    m.set_param("transformer.wte.weight", huge.astype(np.float32))
    x = np.zeros((1, 4), np.int64)
    with pytest.raises(LmcoreError, match="non-finite"):
        m.train_step(x, x, 1e-3)
    assert m.step == 0
    assert np.array_equal(m.get_param("transformer.wte.weight"), huge.astype(np.float32))
