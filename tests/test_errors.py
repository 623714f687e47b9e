"""Bad input gets a clear Python exception, never a crash: stale handles, foreign handles, wrong
shapes, wrong dtypes, out-of-range ids, empty arrays, NaN, nonsense configurations; a sweep feeds
such input to every public function of the engine."""

from __future__ import annotations

import subprocess
import sys

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


# --- every public function, fed wrong shapes, wrong dtypes, NaN, empty arrays, out-of-range ids ---
# Each call must raise ValueError (LmcoreError is one), TypeError or OverflowError with a readable
# one-line message, never panic or abort, and leave the engine working for the next call.


def _model(**kwargs):
    return lmcore.Model(**{**TINY, **kwargs})


def _graph_op(op, *arrays, ids=None, **kwargs):
    def call():
        g = lmcore.Graph("float64")
        handles = [g.tensor(a) for a in arrays] + ([g.ids(ids)] if ids is not None else [])
        return g.value(getattr(g, op)(*handles, **kwargs))
    return call


_ids2 = np.zeros((2, 3), np.int64)
_f = np.ones((2, 3))
BAD_ARRAYS = {  # name: (a float array for Graph.tensor / Model.set_param, an id array for the id inputs)
    "wrong-shape": (np.ones((2, 4, 1, 1)), np.zeros((2, 3, 1), np.int64)),
    "too-many-dims": (np.ones((1,) * 5), np.zeros((1,) * 5, np.int64)),
    "empty": (np.ones((0, 3)), np.zeros((0, 3), np.int64)),
    "empty-rows": (np.ones((3, 0)), np.zeros((2, 0), np.int64)),
    "zero-dim": (np.array(1.0), np.array(1)),
    "float16": (np.ones((2, 3), np.float16), np.ones((2, 3), np.float16)),
    "int8": (np.ones((2, 3), np.int8), np.ones((2, 3), np.int8)),
    "complex": (np.ones((2, 3), complex), np.ones((2, 3), complex)),
    "bool": (np.ones((2, 3), bool), np.ones((2, 3), bool)),
    "object": (np.array([[None] * 3] * 2), np.array([[1, None, 2]] * 2, dtype=object)),
    "big-endian": (np.ones((2, 3), ">f8"), np.zeros((2, 3), ">i8")),
    "list": ([[1.0, 2.0, 3.0]], [[1, 2, 3]]),
    "none": (None, None),
    "string": ("abc", "abc"),
    "nan-ids": (np.full((2, 3), np.nan), np.full((2, 3), np.nan)),
}
OUT_OF_RANGE_IDS = {"negative": -1, "vocab-size": 11, "int64-max": 2**63 - 1, "uint64-max": np.uint64(2**64 - 1)}


def _with_id(value):
    ids = np.zeros((2, 3), dtype=np.uint64 if isinstance(value, np.uint64) else np.int64)
    ids[1, 2] = value
    return ids


def _boundary_cases():
    cases = []
    # Inputs that are fine for some functions: any shape of up to 4 dims (NaN included) is a tensor,
    # a product with an empty dimension is empty, forward's targets are optional.
    valid = {"Graph.tensor-wrong-shape", "Graph.ids-wrong-shape", "Graph.tensor-zero-dim", "Graph.ids-zero-dim",
             "Graph.tensor-nan-ids", "Graph.backward-grad-nan-ids", "matmul_reference-empty-rows",
             "Model.forward-targets-none"}
    for name, (floats, ids) in BAD_ARRAYS.items():
        cases += [
            (f"Graph.tensor-{name}", lambda a=floats: lmcore.Graph("float64").tensor(a)),
            (f"Graph.ids-{name}", lambda a=ids: lmcore.Graph("float64").ids(a)),
            (f"Graph.backward-grad-{name}", lambda a=floats: (lambda g: g.backward(g.gelu(g.tensor(_f)), a))(
                lmcore.Graph("float64"))),
            (f"Model.train_step-{name}", lambda a=ids: _model().train_step(a, a, 1e-3)),
            (f"Model.train_step-targets-{name}", lambda a=ids: _model().train_step(_ids2, a, 1e-3)),
            (f"Model.forward-{name}", lambda a=ids: _model().forward(a)),
            (f"Model.forward-targets-{name}", lambda a=ids: _model().forward(_ids2, a)),
            (f"Model.kv_push-{name}", lambda a=ids: (lambda m: (m.kv_start(2), m.kv_push(a)))(_model())),
            (f"Model.set_param-{name}", lambda a=floats: _model().set_param("transformer.ln_f.bias", a)),
            (f"Model.set_adam_state-{name}", lambda a=floats: _model().set_adam_state("transformer.ln_f.bias", a, a)),
            (f"matmul-{name}", lambda a=floats: lmcore.matmul(a, np.ones((3, 2), np.float32))),
            (f"matmul_reference-{name}", lambda a=floats: lmcore.matmul_reference(np.ones((2, 3)), a)),
        ]
    for name, value in OUT_OF_RANGE_IDS.items():
        bad = _with_id(value)
        cases += [
            (f"Graph.embedding-id-{name}", _graph_op("embedding", np.ones((11, 4)), ids=bad.reshape(-1))),
            (f"Graph.cross_entropy-id-{name}", lambda b=bad: (lambda g: g.cross_entropy(
                g.tensor(np.ones((6, 11))), g.ids(b.reshape(-1))))(lmcore.Graph("float64"))),
            (f"Model.train_step-id-{name}", lambda b=bad: _model().train_step(b, _ids2, 1e-3)),
            (f"Model.train_step-target-{name}", lambda b=bad: _model().train_step(_ids2, b, 1e-3)),
            (f"Model.forward-id-{name}", lambda b=bad: _model().forward(b, _ids2)),
            (f"Model.kv_push-id-{name}", lambda b=bad: (lambda m: (m.kv_start(3), m.kv_push(b[1])))(_model())),
        ]
    nan = np.full((2, 3), np.nan, np.float32)
    cases += [
        ("Model.set_param-nan", lambda: _model().set_param("transformer.ln_f.bias", np.full(8, np.nan, np.float32))),
        ("Model.set_adam_state-inf", lambda: _model().set_adam_state(
            "transformer.ln_f.bias", np.full(8, np.inf, np.float32), np.ones(8, np.float32))),
        ("Model.train_step-lr-nan", lambda: _model().train_step(_ids2, _ids2, float("nan"))),
        ("Model.train_step-lr-negative", lambda: _model().train_step(_ids2, _ids2, -1.0)),
        ("Model.train_step-lr-string", lambda: _model().train_step(_ids2, _ids2, "0.1")),
        ("Model.train_step-too-long", lambda: _model().train_step(np.zeros((1, 7), np.int64),
                                                                  np.zeros((1, 7), np.int64), 1e-3)),
        ("Model.kv_start-zero", lambda: _model().kv_start(0)),
        ("Model.kv_start-negative", lambda: _model().kv_start(-1)),
        ("Model.kv_push-before-start", lambda: _model().kv_push(np.zeros(1, np.int64))),
        ("Model.kv_push-past-the-block", lambda: (lambda m: (m.kv_start(1), [m.kv_push(np.zeros(1, np.int64))
                                                                             for _ in range(7)]))(_model())),
        ("Model.get_param-unknown", lambda: _model().get_param("nope")),
        ("Model.get_adam_state-unknown", lambda: _model().get_adam_state("nope")),
        ("Model.step-negative", lambda: setattr(_model(), "step", -1)),
        ("Model.rng_state-too-big", lambda: setattr(_model(), "rng_state", 2**64)),
        ("Model-seed-negative", lambda: _model(seed=-1)),
        ("Model-dropout-nan", lambda: _model(dropout=float("nan"))),
        ("Model-grad-clip-nan", lambda: _model(grad_clip=float("nan"))),
        ("Model-dtype-int8", lambda: _model(dtype="int8")),
        ("Model-too-large", lambda: _model(d_model=2**40, n_head=1)),
        ("Graph-dtype-none", lambda: lmcore.Graph(None)),
        ("Graph.dropout-p-nan", _graph_op("dropout", _f, p=float("nan"))),
        ("Graph.attention-zero-heads", _graph_op("attention", np.ones((1, 2, 6)), n_head=0)),
        ("Graph.attention-huge-heads", _graph_op("attention", np.ones((1, 2, 6)), n_head=2**70)),
        ("Graph.grad-before-backward", lambda: (lambda g: g.grad(g.tensor(_f)))(lmcore.Graph("float64"))),
        ("Graph.linear-on-ids", lambda: (lambda g: g.linear(g.ids(_ids2), g.tensor(np.ones((3, 3)))))(
            lmcore.Graph("float64"))),
        ("Graph.value-not-a-handle", lambda: lmcore.Graph("float64").value(3)),
        ("matmul-mixed-dtypes", lambda: lmcore.matmul(np.ones((2, 3), np.float32), np.ones((3, 2)))),
        ("matmul-inner-dims-differ", lambda: lmcore.matmul(nan, np.ones((4, 2), np.float32))),
        ("set_num_threads-zero", lambda: lmcore.set_num_threads(0)),
        ("set_num_threads-string", lambda: lmcore.set_num_threads("2")),
    ]
    return [c for c in cases if c[0] not in valid]


BOUNDARY = _boundary_cases()


def _engine_works():
    a = np.ones((40, 30), np.float32)
    assert np.array_equal(lmcore.matmul(a, a.T), np.full((40, 40), 30, np.float32))
    loss, _ = _model().train_step(_ids2, _ids2, 1e-3)
    assert np.isfinite(loss)


@pytest.mark.parametrize("call", [c[1] for c in BOUNDARY], ids=[c[0] for c in BOUNDARY])
def test_every_public_function_refuses_bad_input_with_an_exception(call):
    try:
        with pytest.raises((ValueError, TypeError, OverflowError)) as e:
            call()
    finally:
        lmcore.set_num_threads(2)  # (restores the default of the suite if a case changed it)
    message = str(e.value)
    assert message and "\n" not in message and "panic" not in message.lower(), message
    _engine_works()


@pytest.mark.parametrize("op, args", [
    ("gelu", ()), ("add", (None,)), ("layernorm", (np.ones(3), np.ones(3))), ("linear", (np.ones((4, 3)),)),
    ("dropout", ()), ("cross_entropy", ()),
])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_ops_on_nan_and_inf_give_a_value_or_an_error_never_a_crash(op, args, value):
    g = lmcore.Graph("float64")
    x = g.tensor(np.full((2, 3), value))
    extra = [x if a is None else g.tensor(a) for a in args]
    if op == "dropout":
        extra = [0.5]
    try:
        if op == "cross_entropy":
            y = g.cross_entropy(x, g.ids(np.array([0, 1])))
        else:
            y = getattr(g, op)(x, *extra)
        g.value(y)
        if op == "cross_entropy":
            g.backward(y)
            g.grad(x)
    except (ValueError, TypeError) as e:
        assert str(e) and "\n" not in str(e)
    _engine_works()


# Inputs that once crashed the engine (a panic that poisoned the thread pool, allocation aborts):
# each runs in its own process, so a regression cannot take the test session down with it.
CRASHES = [
    ("matmul-empty-inner-dimension", "lmcore.matmul(np.ones((2, 0), np.float32), np.ones((0, 2), np.float32))"),
    ("Model.kv_start-huge-batch",
     "lmcore.Model(vocab_size=11, d_model=8, n_head=2, n_layer=1, block_size=6).kv_start(2**40)"),
    ("Model-huge-n_layer", "lmcore.Model(vocab_size=11, d_model=8, n_head=2, n_layer=2**40, block_size=6)"),
]


@pytest.mark.parametrize("code", [c[1] for c in CRASHES], ids=[c[0] for c in CRASHES])
def test_former_engine_crashes_raise_or_work(code):
    script = (
        "import numpy as np, lmcore\n"
        f"try:\n    {code}\nexcept (ValueError, TypeError, OverflowError, MemoryError) as e:\n    print('raised', e)\n"
        "a = np.ones((40, 30), np.float32)\n"
        "assert np.array_equal(lmcore.matmul(a, a.T), np.full((40, 40), 30, np.float32))\n"
        "print('engine ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "engine ok" in done.stdout, done.stderr[-500:]


# --- issue 10: one exception type, one message style, help for every flag ---


def test_shape_and_value_errors_are_lmcore_errors() -> None:
    """The README promises LmcoreError (a ValueError) for bad input to the engine."""
    m = lmcore.Model(**TINY)
    x = np.zeros((2, 4), np.int64)
    calls = [
        lambda: m.forward(np.zeros(4, np.int64)),
        lambda: m.forward(np.zeros((0, 4), np.int64)),
        lambda: m.train_step(x, np.zeros((2, 3), np.int64), 1e-3),
        lambda: m.set_param("transformer.wte.weight", np.zeros((3, 3), np.float32)),
        lambda: m.kv_push(np.zeros((1, 2, 3), np.int64)),
        lambda: lmcore.matmul(np.ones(3, np.float32), np.ones((3, 3), np.float32)),
        lambda: lmcore.Graph("float64").tensor(np.ones((0, 3))),
        lambda: lmcore.Graph("float16"),
    ]
    for call in calls:
        with pytest.raises(lmcore.LmcoreError):
            call()


@pytest.mark.parametrize("settings, message", [
    (dict(top_p=2.0), "top-p must be in (0, 1], got 2"),
    (dict(top_k=0), "top-k must be at least 1, got 0"),
    (dict(temperature=-1.0), "temperature"),
])
def test_sampling_errors_read_alike(settings: dict, message: str) -> None:
    from lmcore._core import validate_sampling
    kw = dict(temperature=1.0, top_k=None, top_p=None) | settings
    with pytest.raises(lmcore.LmcoreError) as e:
        validate_sampling(kw["temperature"], kw["top_k"], kw["top_p"])
    assert str(e.value).startswith(message.split(" ")[0]), e.value  # no "invalid argument:" in front
    assert message in str(e.value)


@pytest.mark.parametrize("module", ["train", "generate"])
def test_every_flag_has_help(module: str) -> None:
    import importlib
    parser = importlib.import_module(f"lmcore.{module}").parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
        if action.default not in (None, False) and action.dest != "help":
            assert "default" in action.help, f"{action.option_strings}: the help does not say its default"
