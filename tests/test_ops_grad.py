"""Every op's float64 gradient matches central finite differences, over hypothesis-drawn shapes
and values. Each op runs on a fresh `lmcore.Graph`; the scalar checked is sum(out * G) for a
random G, so every output element's gradient path is exercised."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmcore
from gradcheck import assert_grad_close, numeric_grad

SETTINGS = settings(max_examples=20, deadline=None)
seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)


def check_op(build, float_inputs: dict[str, np.ndarray], ids: dict[str, np.ndarray] | None = None, seed: int = 0):
    """`build(graph, tensors) -> out`; checks d sum(out * G) / d input for every float input."""
    ids = ids or {}

    def run(graph):
        tensors = {k: graph.tensor(v) for k, v in float_inputs.items()}
        tensors.update({k: graph.ids(v) for k, v in ids.items()})
        return tensors, build(graph, tensors)

    g = lmcore.Graph("float64", seed=seed)
    tensors, out = run(g)
    upstream = np.random.default_rng(seed).normal(size=g.shape(out))
    g.backward(out, upstream)

    def scalar() -> float:
        fresh = lmcore.Graph("float64", seed=seed)  # same seed: same dropout mask
        _, o = run(fresh)
        return float(np.sum(fresh.value(o) * upstream))

    for name, array in float_inputs.items():
        assert_grad_close(g.grad(tensors[name]), numeric_grad(scalar, array), name)


def normal(rng, *shape, scale=1.0):
    return rng.normal(scale=scale, size=shape)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 6), vocab=st.integers(1, 7), c=small)
def test_embedding(seed, n, vocab, c):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n,))
    check_op(lambda g, t: g.embedding(t["ids"], t["table"]), {"table": normal(rng, vocab, c)}, {"ids": ids})


@SETTINGS
@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_add(seed, shape):
    rng = np.random.default_rng(seed)
    check_op(lambda g, t: g.add(t["a"], t["b"]), {"a": normal(rng, *shape), "b": normal(rng, *shape)})


@SETTINGS
@given(seed=seeds)
def test_add_same_tensor_twice(seed):
    rng = np.random.default_rng(seed)
    check_op(lambda g, t: g.add(t["a"], t["a"]), {"a": normal(rng, 3, 2)})


@SETTINGS
@given(seed=seeds, b=small, t=small, k=st.integers(1, 6), m=st.integers(1, 6), bias=st.booleans())
def test_linear(seed, b, t, k, m, bias):
    rng = np.random.default_rng(seed)
    inputs = {"x": normal(rng, b, t, k), "w": normal(rng, m, k)}
    if bias:
        inputs["b"] = normal(rng, m)
    check_op(lambda g, ts: g.linear(ts["x"], ts["w"], ts.get("b")), inputs)


@SETTINGS
@given(seed=seeds, rows=small, c=st.integers(2, 8))
def test_layernorm(seed, rows, c):
    rng = np.random.default_rng(seed)
    x = normal(rng, rows, c, scale=2.0)
    # Rows spread out (std at least 0.1): a nearly constant row, as two channels often give, makes
    # (x - mean) / sqrt(var + eps) so steep that a finite difference measures its step (800 draws:
    # worst at 1.04x the tolerance as drawn, 0.02x spread).
    mean = x.mean(-1, keepdims=True)
    x = mean + (x - mean) * np.maximum(1.0, 0.1 / x.std(-1, keepdims=True))
    inputs = {"x": x, "gamma": normal(rng, c), "beta": normal(rng, c)}
    check_op(lambda g, t: g.layernorm(t["x"], t["gamma"], t["beta"]), inputs)


@SETTINGS
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_gelu(seed, shape):
    rng = np.random.default_rng(seed)
    check_op(lambda g, t: g.gelu(t["x"]), {"x": normal(rng, *shape, scale=2.0)})


@SETTINGS
@given(seed=seeds, b=st.integers(1, 2), t=st.integers(1, 5), n_head=st.integers(1, 3), hs=st.integers(1, 3))
def test_attention(seed, b, t, n_head, hs):
    rng = np.random.default_rng(seed)
    c = n_head * hs
    check_op(lambda g, ts: g.attention(ts["qkv"], n_head), {"qkv": normal(rng, b, t, 3 * c)})


@SETTINGS
@given(seed=seeds, rows=st.integers(1, 6), v=st.integers(1, 8))
def test_cross_entropy(seed, rows, v):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, v, size=(rows,))
    check_op(lambda g, t: g.cross_entropy(t["logits"], t["targets"]), {"logits": normal(rng, rows, v, scale=3.0)}, {"targets": targets})


@SETTINGS
@given(seed=seeds, b=st.integers(2, 4), t=st.integers(1, 5), v=st.integers(1, 8), keep=st.floats(0.0, 1.0))
def test_cross_entropy_with_ignored_targets(seed, b, t, v, keep):
    """Random masks (each target ignored with probability 1 - keep), one batch row always fully
    ignored: central differences agree, and the ignored positions' gradient is exactly zero."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, v, size=(b, t))
    targets[rng.random((b, t)) >= keep] = lmcore.IGNORE_ID
    targets[rng.integers(0, b)] = lmcore.IGNORE_ID
    logits = normal(rng, b, t, v, scale=3.0)
    check_op(lambda g, ts: g.cross_entropy(ts["logits"], ts["targets"]), {"logits": logits}, {"targets": targets})
    g = lmcore.Graph("float64")
    x = g.tensor(logits)
    loss = g.cross_entropy(x, g.ids(targets))
    g.backward(loss)
    ignored = targets == lmcore.IGNORE_ID
    assert np.all(g.grad(x)[ignored] == 0.0)
    counted = ~ignored
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = -logp[counted, targets[counted]].mean() if counted.any() else 0.0  # none counted: 0, documented
    assert np.isclose(float(g.value(loss)), want, rtol=1e-12, atol=1e-15)


def test_ignored_rows_add_exactly_nothing():
    """Ignoring every other row gives the same bits as leaving those rows out."""
    rng = np.random.default_rng(3)
    logits, targets = rng.normal(size=(64, 11)).astype(np.float32), rng.integers(0, 11, size=64)
    g = lmcore.Graph("float32")
    plain = g.value(g.cross_entropy(g.tensor(logits), g.ids(targets)))
    masked = targets.copy()
    masked[::2] = lmcore.IGNORE_ID
    half = g.value(g.cross_entropy(g.tensor(logits[1::2]), g.ids(targets[1::2])))
    assert float(g.value(g.cross_entropy(g.tensor(logits), g.ids(masked)))) == float(half)
    assert float(plain) != float(half)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 12), p=st.floats(0.05, 0.9))
def test_dropout(seed, n, p):
    rng = np.random.default_rng(seed)
    check_op(lambda g, t: g.dropout(t["x"], p), {"x": normal(rng, n)}, seed=seed)


def numpy_attention(qkv: np.ndarray, nh: int) -> np.ndarray:
    """Causal multi-head attention on (B, T, 3C), written out in numpy: the reference."""
    b, t, c3 = qkv.shape
    c, hs = c3 // 3, c3 // 3 // nh
    q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, t, nh, hs).transpose(0, 2, 1, 3) for i in range(3))
    scores = np.where(np.tril(np.ones((t, t), bool)), q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, c)


@pytest.mark.parametrize("t", [5, 77])  # one query block, and several (blocks are 32 rows)
def test_attention_is_causal_and_matches_numpy(t):
    qkv = np.random.default_rng(t).normal(size=(2, t, 18))
    g = lmcore.Graph("float64")
    out = g.value(g.attention(g.tensor(qkv), 2))
    np.testing.assert_allclose(out, numpy_attention(qkv, 2), rtol=1e-12, atol=1e-12)


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 7)) * 5
    targets = np.array([0, 6, 3, 3])
    g = lmcore.Graph("float64")
    loss = g.value(g.cross_entropy(g.tensor(logits), g.ids(targets)))
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    assert np.isclose(float(loss), -logp[np.arange(4), targets].mean(), rtol=1e-12)


def test_layernorm_and_gelu_match_numpy():
    rng = np.random.default_rng(2)
    x, gamma, beta = rng.normal(size=(3, 6)), rng.normal(size=6), rng.normal(size=6)
    g = lmcore.Graph("float64")
    ln = g.value(g.layernorm(g.tensor(x), g.tensor(gamma), g.tensor(beta)))
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    np.testing.assert_allclose(ln, (x - mu) / np.sqrt(var + 1e-5) * gamma + beta, rtol=1e-12)
    ge = g.value(g.gelu(g.tensor(x)))
    np.testing.assert_allclose(ge, 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), rtol=1e-12)


def test_dropout_is_seeded_and_scales():
    x = np.ones(10_000)
    a = lmcore.Graph("float64", seed=5)
    b = lmcore.Graph("float64", seed=5)
    ya, yb = a.value(a.dropout(a.tensor(x), 0.25)), b.value(b.dropout(b.tensor(x), 0.25))
    assert np.array_equal(ya, yb)
    assert set(np.unique(ya)) == {0.0, 1 / 0.75}
    assert abs((ya == 0).mean() - 0.25) < 0.02
    assert np.array_equal(a.value(a.dropout(a.tensor(x), 0.0)), x)


@settings(max_examples=4, deadline=None)
@given(seed=seeds, t=st.integers(33, 70))
def test_attention_gradient_across_query_blocks(seed, t):
    """Sequences longer than one query block (32 rows) exercise the blocked causal product."""
    rng = np.random.default_rng(seed)
    check_op(lambda g, ts: g.attention(ts["qkv"], 2), {"qkv": normal(rng, 1, t, 6)})



# The block options' ops (RMSNorm, ReLU^2, QK-norm, RoPE, the logit soft-cap).

@SETTINGS
@given(seed=seeds, rows=small, c=st.integers(1, 8))
def test_rmsnorm(seed, rows, c):
    rng = np.random.default_rng(seed)
    x = normal(rng, rows, c, scale=2.0)
    # Away from 0, as for QK-norm: with one channel (c 1) the norm is x / sqrt(x^2 + eps), so steep
    # near 0 that a finite difference there measures its step (1,500 draws: worst at 1.03x the
    # tolerance unshifted, 0.012x shifted).
    x += np.where(x < 0, -0.1, 0.1)
    check_op(lambda g, t: g.rmsnorm(t["x"], t["gain"]), {"x": x, "gain": normal(rng, c)})


@SETTINGS
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_relu_squared(seed, shape):
    rng = np.random.default_rng(seed)
    x = normal(rng, *shape, scale=2.0)
    x += np.where(x < 0, -0.01, 0.01)  # off the kink, where a finite difference straddles both sides
    check_op(lambda g, t: g.relu_squared(t["x"]), {"x": x})


@SETTINGS
@given(seed=seeds, rows=small, h=st.integers(1, 6))
def test_swiglu(seed, rows, h):
    rng = np.random.default_rng(seed)
    check_op(lambda g, t: g.swiglu(t["x"]), {"x": normal(rng, rows, 2 * h, scale=2.0)})


def test_swiglu_is_silu_of_the_gate_times_up() -> None:
    x = np.random.default_rng(0).normal(size=(3, 2, 10)) * 3
    g = lmcore.Graph("float64")
    gate, up = x[..., :5], x[..., 5:]
    np.testing.assert_allclose(g.value(g.swiglu(g.tensor(x))), gate / (1 + np.exp(-gate)) * up, rtol=1e-12)
    with pytest.raises(lmcore.LmcoreError, match="swiglu input must be a non-empty"):
        g.swiglu(g.tensor(np.ones((2, 3))))


@SETTINGS
@given(seed=seeds, b=st.integers(1, 2), t=st.integers(1, 4), n_head=st.integers(1, 3), hs=st.integers(1, 4))
def test_qk_norm(seed, b, t, n_head, hs):
    rng = np.random.default_rng(seed)
    c = n_head * hs
    qkv = normal(rng, b, t, 3 * c, scale=2.0)
    # Away from 0: with one value per head (hs 1) the norm is x / sqrt(x^2 + eps), so steep near 0
    # that a finite difference there measures its step, not the gradient.
    qkv += np.where(qkv < 0, -0.1, 0.1)
    inputs = {"qkv": qkv, "q_gain": normal(rng, hs), "k_gain": normal(rng, hs)}
    check_op(lambda g, ts: g.qk_norm(ts["qkv"], ts["q_gain"], ts["k_gain"], n_head), inputs)


@SETTINGS
@given(seed=seeds, b=st.integers(1, 2), t=st.integers(1, 6), n_head=st.integers(1, 3), half=st.integers(1, 3))
def test_rope(seed, b, t, n_head, half):
    rng = np.random.default_rng(seed)
    c = n_head * 2 * half
    check_op(lambda g, ts: g.rope(ts["qkv"], n_head), {"qkv": normal(rng, b, t, 3 * c)})


@SETTINGS
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), cap=st.floats(0.5, 5.0))
def test_softcap(seed, shape, cap):
    rng = np.random.default_rng(seed)
    check_op(lambda g, t: g.softcap(t["x"], cap), {"x": normal(rng, *shape, scale=3.0)})


def numpy_rms(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)


def numpy_rope(qkv: np.ndarray, nh: int) -> np.ndarray:
    """Rotary embeddings written out: channel j of a head's first half pairs with channel j of its
    second half, rotated by position * 10000^(-j / half)."""
    b, t, c3 = qkv.shape
    c = c3 // 3
    half = c // nh // 2
    angle = np.arange(t)[:, None] * 10_000.0 ** (-np.arange(half) / half)  # (t, half)
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]
    out = qkv.copy()
    for part in (0, 1):  # queries, keys
        x = qkv[..., part * c:(part + 1) * c].reshape(b, t, nh, 2 * half)
        lo, hi = x[..., :half], x[..., half:]
        out[..., part * c:(part + 1) * c] = np.concatenate([lo * cos - hi * sin, lo * sin + hi * cos], -1).reshape(b, t, c)
    return out


def test_block_option_ops_match_numpy():
    rng = np.random.default_rng(3)
    g = lmcore.Graph("float64")
    x, gain = rng.normal(size=(3, 6)), rng.normal(size=6)
    np.testing.assert_allclose(g.value(g.rmsnorm(g.tensor(x), g.tensor(gain))), numpy_rms(x) * gain, rtol=1e-12)
    np.testing.assert_allclose(g.value(g.relu_squared(g.tensor(x))), np.maximum(x, 0) ** 2, rtol=1e-12)
    np.testing.assert_allclose(g.value(g.softcap(g.tensor(x * 10), 4.0)), 4.0 * np.tanh(x * 10 / 4.0), rtol=1e-12)
    nh, hs, t = 2, 4, 5
    qkv, qg, kg = rng.normal(size=(2, t, 3 * nh * hs)), rng.normal(size=hs), rng.normal(size=hs)
    want = qkv.copy()
    for part, gain in ((0, qg), (1, kg)):
        heads = qkv[..., part * nh * hs:(part + 1) * nh * hs].reshape(2, t, nh, hs)
        want[..., part * nh * hs:(part + 1) * nh * hs] = (numpy_rms(heads) * gain).reshape(2, t, nh * hs)
    got = g.value(g.qk_norm(g.tensor(qkv), g.tensor(qg), g.tensor(kg), nh))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g.value(g.rope(g.tensor(qkv), nh)), numpy_rope(qkv, nh), rtol=1e-12, atol=1e-14)


def test_block_option_ops_refuse_bad_input():
    g = lmcore.Graph("float64")
    qkv = g.tensor(np.ones((1, 2, 18)))
    with pytest.raises(lmcore.LmcoreError, match="even size"):
        g.rope(qkv, 2)  # heads of 3 channels
    with pytest.raises(lmcore.LmcoreError, match="finite number > 0"):
        g.softcap(qkv, 0.0)
    with pytest.raises(lmcore.LmcoreError, match="head size"):
        g.qk_norm(qkv, g.tensor(np.ones(6)), g.tensor(np.ones(3)), 2)
    with pytest.raises(lmcore.LmcoreError, match="gain must have shape"):
        g.rmsnorm(qkv, g.tensor(np.ones(3)))
