"""The GPT and its AdamW through `lmcore.Model`: whole-model gradients against finite
differences, one AdamW step against a numpy float64 reference, determinism, and state access."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmcore
from gradcheck import assert_model_grads_match, perturb_weights

TINY = dict(vocab_size=11, d_model=8, n_head=2, n_layer=2, block_size=6)


def batch(rng, b=2, t=5, vocab=11):
    return rng.integers(0, vocab, size=(b, t)), rng.integers(0, vocab, size=(b, t))


def test_small_model_has_the_documented_parameter_count():
    m = lmcore.Model(vocab_size=65, d_model=128, n_head=4, n_layer=2, block_size=128)
    assert m.num_params == 421_504
    assert m.param_names()[0] == "transformer.wte.weight"
    assert sum(m.get_param(n).size for n in m.param_names()) == m.num_params


def test_whole_model_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    m = lmcore.Model(**TINY, seed=3, dtype="float64", weight_decay=0.0)
    # Weights larger than the 0.02 init so every path carries a visible gradient.
    perturb_weights(m, rng)
    x, y = batch(rng)
    assert_model_grads_match(m, x, y)


def adamw_reference(params, grads, ms, vs, t, lr, beta1, beta2, eps, wd, clip):
    """AdamW with bias correction and decoupled decay on 2-D weights, global-norm clipping."""
    norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
    scale = clip / (norm + 1e-6) if clip > 0 and norm > clip else 1.0
    out = {}
    for name, p in params.items():
        g = grads[name] * scale
        p = p * (1 - lr * wd) if p.ndim == 2 else p.copy()
        m = beta1 * ms[name] + (1 - beta1) * g
        v = beta2 * vs[name] + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        out[name] = (p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v)
    return out, norm


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    lr=st.floats(1e-5, 1e-1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    wd=st.floats(0.0, 0.5),
    clip=st.sampled_from([0.0, 0.01, 1.0, 100.0]),
    step=st.integers(0, 1000),
)
def test_adamw_step_matches_numpy_reference(seed, lr, beta1, beta2, wd, clip, step):
    rng = np.random.default_rng(seed)
    m = lmcore.Model(**TINY, seed=seed % 1000, dtype="float64", beta1=beta1, beta2=beta2, eps=1e-8, weight_decay=wd, grad_clip=clip)
    names = m.param_names()
    for name in names:  # arbitrary moments and step count, as after a resume
        shape = m.get_param(name).shape
        m.set_adam_state(name, rng.normal(scale=1e-3, size=shape), rng.random(size=shape) * 1e-6)
    m.step = step
    params = {n: m.get_param(n) for n in names}
    ms = {n: m.get_adam_state(n)[0] for n in names}
    vs = {n: m.get_adam_state(n)[1] for n in names}
    x, y = batch(rng)
    _, grad_norm = m.train_step(x, y, lr)
    grads = {n: m.get_grad(n) for n in names}
    expected, norm = adamw_reference(params, grads, ms, vs, step + 1, lr, beta1, beta2, 1e-8, wd, clip)
    assert m.step == step + 1
    assert np.isclose(grad_norm, norm, rtol=1e-12)
    for name in names:
        p, mm, vv = expected[name]
        np.testing.assert_allclose(m.get_param(name), p, rtol=1e-6, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(m.get_adam_state(name)[0], mm, rtol=1e-6, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(m.get_adam_state(name)[1], vv, rtol=1e-6, atol=1e-18, err_msg=name)


def test_training_is_deterministic_and_learns():
    rng = np.random.default_rng(1)
    batches = [batch(rng, 4, 6) for _ in range(40)]
    runs = []
    for _ in range(2):
        m = lmcore.Model(**TINY, seed=7, dropout=0.1, beta2=0.99, weight_decay=0.1, grad_clip=1.0)
        losses = [m.train_step(x, y, 3e-3)[0] for x, y in batches[:1] * 40]
        runs.append((losses, [m.get_param(n) for n in m.param_names()], m.rng_state))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][0][-1] < runs[0][0][0] - 0.5  # memorises one batch


def test_float32_and_float64_agree():
    rng = np.random.default_rng(2)
    m32 = lmcore.Model(**TINY, seed=1, dtype="float32")
    m64 = lmcore.Model(**TINY, seed=1, dtype="float64")
    x, y = batch(rng)
    logits32, loss32 = m32.forward(x, y)
    logits64, loss64 = m64.forward(x, y)
    assert logits32.dtype == np.float32 and logits64.dtype == np.float64
    np.testing.assert_allclose(logits32, logits64, rtol=1e-4, atol=1e-5)
    assert abs(loss32 - loss64) < 1e-5


def test_state_round_trips_through_numpy():
    rng = np.random.default_rng(3)
    a = lmcore.Model(**TINY, seed=1, dropout=0.2)
    for x, y in [batch(rng) for _ in range(3)]:
        a.train_step(x, y, 1e-3)
    b = lmcore.Model(**TINY, seed=99, dropout=0.2)
    for name in a.param_names():
        b.set_param(name, a.get_param(name))
        b.set_adam_state(name, *a.get_adam_state(name))
    b.step, b.rng_state = a.step, a.rng_state
    x, y = batch(rng)
    assert a.train_step(x, y, 1e-3) == b.train_step(x, y, 1e-3)
    assert all(np.array_equal(a.get_param(n), b.get_param(n)) for n in a.param_names())


def test_forward_does_not_disturb_training_state():
    rng = np.random.default_rng(4)
    m = lmcore.Model(**TINY, seed=2, dropout=0.3)
    state = m.rng_state
    before = m.get_param("transformer.wte.weight")
    m.forward(*batch(rng))
    assert m.rng_state == state and m.step == 0
    assert np.array_equal(before, m.get_param("transformer.wte.weight"))


def test_arena_is_flat_after_first_step():
    rng = np.random.default_rng(5)
    m = lmcore.Model(**TINY, seed=0)
    x, y = batch(rng)
    m.train_step(x, y, 1e-3)
    hw, cap = m.arena_high_water_bytes, m.arena_capacity_bytes
    for _ in range(50):
        m.train_step(*batch(rng), 1e-3)
    assert (m.arena_high_water_bytes, m.arena_capacity_bytes) == (hw, cap)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_is_settable(threads):
    import warnings  # noqa: PLC0415
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        used = lmcore.set_num_threads(threads)
    assert lmcore.num_threads() == used
    # Capped at the cores this process may use, with a warning (under `taskset -c 0`, 2 gives 1).
    assert used == threads or (1 <= used < threads and any(w.category is RuntimeWarning for w in warned))


def test_optimizer_state_is_read_and_written_by_buffer_name() -> None:
    m = lmcore.Model(vocab_size=11, d_model=8, n_head=2, n_layer=1, block_size=6)
    assert m.optimizer == "adamw" and m.optimizer_state_names() == ["adam_m", "adam_v"]
    x = np.zeros((2, 6), np.int64)
    m.train_step(x, x, 1e-3)
    name = "transformer.wte.weight"
    assert np.array_equal(m.get_optimizer_state(name, "adam_m"), m.get_adam_state(name)[0])
    m.set_optimizer_state(name, "adam_v", np.full((11, 8), 0.5, np.float32))
    assert np.array_equal(m.get_adam_state(name)[1], np.full((11, 8), 0.5, np.float32))
    with pytest.raises(lmcore.LmcoreError, match=r"adamw has no state buffer \"momentum\""):
        m.get_optimizer_state(name, "momentum")
    with pytest.raises(lmcore.LmcoreError, match="non-negative"):
        m.set_optimizer_state(name, "adam_v", np.full((11, 8), -1.0, np.float32))


def test_settings_cross_once_and_the_engine_validates_them() -> None:
    from lmcore._core import check_settings, param_layout
    tiny = dict(vocab_size=11, d_model=8, n_head=2, n_layer=1, block_size=6)
    with pytest.raises(TypeError, match="no setting \"n_heads\""):
        lmcore.Model(**{**tiny, "n_heads": 2})
    with pytest.raises(lmcore.LmcoreError, match="n_head 3 does not divide d_model 8"):
        check_settings(**{**tiny, "n_head": 3})
    with pytest.raises(lmcore.LmcoreError, match="weight_decay must be a finite number >= 0"):
        check_settings(**tiny, weight_decay=-1.0)
    model = lmcore.Model(**tiny)
    layout = param_layout(**tiny)
    assert [name for name, _ in layout] == model.param_names()
    assert all(tuple(shape) == model.get_param(name).shape for name, shape in layout)


# --- the block options ---

ALL_OPTIONS = dict(rope=True, rmsnorm=True, qk_norm=True, relu2=True, untied_head=True, zero_init=True,
                   logit_softcap=4.0)


def test_block_options_off_are_the_classic_model() -> None:
    """Every option off, spelled out, is the model of before: the same layout and initial weights."""
    from lmcore._core import param_layout
    off = dict(rope=False, rmsnorm=False, qk_norm=False, relu2=False, swiglu=False, no_bias=False,
               untied_head=False, zero_init=False, logit_softcap=0.0)
    assert param_layout(**TINY) == param_layout(**TINY, **off)
    a, b = lmcore.Model(**TINY, seed=5), lmcore.Model(**TINY, seed=5, **off)
    assert all(np.array_equal(a.get_param(n), b.get_param(n)) for n in a.param_names())
    assert a.config == {**TINY, "dropout": 0.0, **off}


def test_each_option_changes_the_layout_as_documented() -> None:
    from lmcore._core import param_layout
    classic = dict(param_layout(**TINY))
    hs = TINY["d_model"] // TINY["n_head"]

    def diff(**option: object) -> tuple[set[str], set[str]]:
        layout = dict(param_layout(**TINY, **option))
        return set(layout) - set(classic), set(classic) - set(layout)

    assert diff(rope=True) == (set(), {"transformer.wpe.weight"})
    assert diff(rmsnorm=True) == (set(), {"transformer.ln_f.bias"} | {f"transformer.h.{i}.ln_{j}.bias"
                                                                      for i in range(2) for j in (1, 2)})
    added, removed = diff(qk_norm=True)
    assert removed == set() and added == {f"transformer.h.{i}.attn.{p}_norm.weight" for i in range(2) for p in "qk"}
    assert dict(param_layout(**TINY, qk_norm=True))["transformer.h.0.attn.q_norm.weight"] == [hs]
    assert diff(untied_head=True) == ({"lm_head.weight"}, set())
    assert dict(param_layout(**TINY, untied_head=True))["lm_head.weight"] == [11, 8]
    for option in (dict(relu2=True), dict(zero_init=True), dict(logit_softcap=3.0)):
        assert diff(**option) == (set(), set())
    assert diff(no_bias=True) == (set(), {f"transformer.h.{i}.{p}.bias" for i in range(2)
                                          for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")})
    swiglu = dict(param_layout(**TINY, swiglu=True))  # the same names; c_fc makes the gate and up
    assert set(swiglu) == set(classic) and swiglu["transformer.h.0.mlp.c_fc.weight"] == [64, 8]
    assert swiglu["transformer.h.0.mlp.c_fc.bias"] == [64] and swiglu["transformer.h.0.mlp.c_proj.weight"] == [8, 32]
    names = [n for n, _ in param_layout(**TINY, **ALL_OPTIONS)]
    m = lmcore.Model(**TINY, **ALL_OPTIONS)
    assert m.param_names() == names and names[-1] == "lm_head.weight"
    assert m.num_params == sum(m.get_param(n).size for n in names)


def test_zero_init_zeroes_the_projections_and_an_untied_head_only() -> None:
    zeroed = ("attn.c_proj.weight", "mlp.c_proj.weight")
    untied = lmcore.Model(**TINY, zero_init=True, untied_head=True)
    for name in untied.param_names():
        is_zero = not untied.get_param(name).any()
        should = name.endswith(zeroed) or name == "lm_head.weight" or name.endswith("bias")
        assert is_zero == should, name
    tied = lmcore.Model(**TINY, zero_init=True)  # the head is the embedding: not zeroed
    assert tied.get_param("transformer.wte.weight").std() > 0.01
    assert not tied.get_param("transformer.h.1.mlp.c_proj.weight").any()


# The block that exports as Qwen3 (Llama without --qk-norm).
LLAMA_OPTIONS = dict(rope=True, rmsnorm=True, qk_norm=True, swiglu=True, untied_head=True, zero_init=True)


@pytest.mark.parametrize("options", [ALL_OPTIONS, LLAMA_OPTIONS], ids=["relu2-softcap", "swiglu"])
def test_whole_model_gradient_with_every_option_matches_finite_differences(options: dict) -> None:
    rng = np.random.default_rng(1)
    m = lmcore.Model(**TINY, **options, seed=3, dtype="float64", weight_decay=0.0)
    perturb_weights(m, rng)
    x, y = batch(rng)
    assert_model_grads_match(m, x, y)


@pytest.mark.parametrize("options", [dict(ALL_OPTIONS), dict(rope=True, qk_norm=True), dict(relu2=True, rmsnorm=True),
                                     dict(LLAMA_OPTIONS)])
def test_training_with_block_options_is_deterministic_and_learns(options: dict) -> None:
    rng = np.random.default_rng(0)
    x, y = batch(rng, b=4, t=6)
    runs = []
    for _ in range(2):
        m = lmcore.Model(**TINY, **options, seed=1)
        runs.append([m.train_step(x, y, lr=1e-2)[0] for _ in range(40)])
    assert runs[0] == runs[1]
    assert runs[0][-1] < 0.5 * runs[0][0]


def test_block_option_settings_are_validated() -> None:
    from lmcore._core import check_settings
    with pytest.raises(lmcore.LmcoreError, match="logit_softcap must be a finite number >= 0"):
        check_settings(**TINY, logit_softcap=-1.0)
    with pytest.raises(lmcore.LmcoreError, match="logit_softcap must be a finite number >= 0"):
        check_settings(**TINY, logit_softcap=float("inf"))
    with pytest.raises(lmcore.LmcoreError, match="rope needs an even head size, but d_model 6 / n_head 2 = 3"):
        check_settings(**{**TINY, "d_model": 6}, rope=True)
    with pytest.raises(lmcore.LmcoreError, match="swiglu and relu2 are two MLP activations"):
        check_settings(**TINY, swiglu=True, relu2=True)
    with pytest.raises(TypeError, match="rope must be True or False"):
        check_settings(**TINY, rope=1)
    check_settings(**{**TINY, "d_model": 6}, rmsnorm=True, qk_norm=True)  # an odd head size is fine without rope
