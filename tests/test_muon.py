"""Muon (``optimizer="muon"``, ``--optimizer muon``): one update against a float64 numpy reference
of the same algorithm (Nesterov momentum, the Newton-Schulz quintic per Q, K, V block, the
sqrt(max(1, rows/cols)) scale, decoupled weight decay, AdamW for every other parameter) on a model
of random weights and state, in float64 to 1e-9 and in float32 more loosely; a Muon run learns; a
``--optimizer muon`` run resumes bit for bit; an optimizer cannot change on resume; a checkpoint of
a recipe from before Muon loads as AdamW's; bad settings are one-line errors naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import lmcore
from cli_helpers import (
    RECIPE, assert_one_line_error, assert_same_checkpoint, assert_same_weights, iter_num, metrics,
    requires_corpus, resume, run_main, snapshot, train,
)
from lmcore.checkpoint.file import METADATA_KEY, load_checkpoint
from lmcore.checkpoint.state import DIGEST_KEY, model_from_checkpoint, state_digest
from lmcore.config import LATER_FIELDS, RunConfig

# d_model 32, two layers: the model's own shapes (c_attn (96, 32) in three blocks, c_fc (128, 32)
# tall, mlp.c_proj (32, 128) wide, c_proj (32, 32) square).
SHAPE = dict(vocab_size=13, d_model=32, n_head=2, n_layer=2, block_size=8)
NS_COEFFS, NS_STEPS = (3.4445, -4.7750, 2.0315), 5
# Muon's matrices and their row blocks, by the end of their names (everything else is AdamW's).
MUON_BLOCKS = {"attn.c_attn.weight": 3, "attn.c_proj.weight": 1, "mlp.c_fc.weight": 1, "mlp.c_proj.weight": 1}


def muon_blocks(name: str) -> int | None:
    return next((k for suffix, k in MUON_BLOCKS.items() if name.startswith("transformer.h.") and name.endswith(suffix)),
                None)


def newton_schulz(g: np.ndarray) -> np.ndarray:
    """The quintic iteration on G / ||G||_F, on the transpose when G is tall."""
    a, b, c = NS_COEFFS
    x = g / (np.linalg.norm(g) + 1e-7)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon_reference(params, grads, state, t, lr, ratio, momentum, beta1, beta2, eps, wd, clip):
    """One Muon update in float64: the new parameters and state buffers, and the gradient norm."""
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    scale = clip / (norm + 1e-6) if clip > 0 and norm > clip else 1.0
    out = {}
    for name, p in params.items():
        g = grads[name].astype(np.float64) * scale
        buf, m, v = (state[b][name].astype(np.float64) for b in ("muon_momentum", "adam_m", "adam_v"))
        p = p.astype(np.float64)
        blocks = muon_blocks(name)
        if blocks is not None:
            buf = momentum * buf + g
            u = g + momentum * buf
            o = np.concatenate([newton_schulz(blk) for blk in np.split(u, blocks, axis=0)])
            rows, cols = p.shape[0] // blocks, p.shape[1]
            lr_m = lr * ratio
            p = (1 - lr_m * wd) * p - lr_m * np.sqrt(max(1.0, rows / cols)) * o
        else:
            p = p * (1 - lr * wd) if p.ndim == 2 else p
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            p = p - lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
        out[name] = {"param": p, "muon_momentum": buf, "adam_m": m, "adam_v": v}
    return out, norm


@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-9, 1e-12), ("float32", 2e-4, 2e-6)])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_one_muon_update_matches_a_float64_reference(dtype: str, rtol: float, atol: float, clip: float) -> None:
    rng = np.random.default_rng(5)
    hyper = dict(beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, muon_momentum=0.95)
    lr, ratio = 3e-3, 7.0
    model = lmcore.Model(**SHAPE, dtype=dtype, optimizer="muon", muon_lr_ratio=ratio, grad_clip=clip, **hyper)
    names = model.param_names()
    assert model.optimizer == "muon" and model.optimizer_state_names() == ["muon_momentum", "adam_m", "adam_v"]
    assert {n for n in names if muon_blocks(n)} == {n for n in names if n.startswith("transformer.h.")
                                                    and model.get_param(n).ndim == 2}
    # Random weights and state, as after a resume; each buffer only where its optimizer reads it
    # (the other optimizer's part must stay as it is).
    for name in names:
        shape = model.get_param(name).shape
        model.set_param(name, rng.normal(scale=0.3, size=shape).astype(dtype))
        model.set_optimizer_state(name, "muon_momentum", rng.normal(scale=1e-2, size=shape).astype(dtype))
        model.set_optimizer_state(name, "adam_m", rng.normal(scale=1e-3, size=shape).astype(dtype))
        model.set_optimizer_state(name, "adam_v", (rng.random(size=shape) * 1e-6).astype(dtype))
    model.step = 4
    params = {n: model.get_param(n) for n in names}
    state = {b: {n: model.get_optimizer_state(n, b) for n in names} for b in ("muon_momentum", "adam_m", "adam_v")}
    x, y = rng.integers(0, SHAPE["vocab_size"], size=(2, 2, 8))
    _, grad_norm = model.train_step(x, y, lr)
    grads = {n: model.get_grad(n) for n in names}
    expected, norm = muon_reference(params, grads, state, 5, lr, ratio, hyper["muon_momentum"], hyper["beta1"],
                                    hyper["beta2"], hyper["eps"], hyper["weight_decay"], clip)
    assert model.step == 5
    assert np.isclose(grad_norm, norm, rtol=1e-6)
    if clip:
        assert norm > clip  # the clipping factor is applied before the momentum
    for name in names:
        kept = ("adam_m", "adam_v") if muon_blocks(name) else ("muon_momentum",)
        for buffer in ("param", "muon_momentum", "adam_m", "adam_v"):
            got = model.get_param(name) if buffer == "param" else model.get_optimizer_state(name, buffer)
            if buffer in kept:  # the other optimizer's part: untouched
                assert np.array_equal(got, state[buffer][name]), (name, buffer)
            else:
                np.testing.assert_allclose(got, expected[name][buffer], rtol=rtol, atol=atol,
                                           err_msg=f"{buffer} {name}")
    # The update is what the parameters moved by: it must be far above the tolerance.
    moved = max(np.abs(model.get_param(n) - params[n]).max() for n in names if muon_blocks(n))
    assert moved > 1e-3


def test_the_reference_is_the_quintic_on_the_singular_values() -> None:
    """The reference itself, by an SVD: NS5(G) = U f(S / ||G||_F) V^T, f the quintic applied five
    times, which takes every singular value above 0.2% of the norm into [0.65, 1.2]."""
    a, b, c = NS_COEFFS

    def f(x: np.ndarray) -> np.ndarray:
        for _ in range(NS_STEPS):
            x = a * x + b * x**3 + c * x**5
        return x

    rng = np.random.default_rng(0)
    for g in [*np.split(rng.normal(size=(96, 32)), 3), rng.normal(size=(128, 32)), rng.normal(size=(32, 128))]:
        u, s, vt = np.linalg.svd(g, full_matrices=False)
        np.testing.assert_allclose(newton_schulz(g), u @ np.diag(f(s / (np.linalg.norm(g) + 1e-7))) @ vt, atol=1e-11)
        x = s / np.linalg.norm(g)
        assert ((f(x) > 0.65) & (f(x) < 1.2) | (x < 2e-3)).all()


def test_muon_learns_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, SHAPE["vocab_size"], size=(2, 4, 8))
    runs = []
    for _ in range(2):
        m = lmcore.Model(**SHAPE, seed=7, dropout=0.1, optimizer="muon", muon_lr_ratio=10.0, weight_decay=0.1,
                         grad_clip=1.0)
        losses = [m.train_step(x, y, 2e-3)[0] for _ in range(40)]
        runs.append((losses, [m.get_param(n) for n in m.param_names()]))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][0][-1] < runs[0][0][0] - 1.0, runs[0][0]  # memorises one batch


@pytest.mark.parametrize("settings, message", [
    (dict(optimizer="sgd"), r'optimizer must be one of adamw, muon, got "sgd"'),
    (dict(optimizer="muon", muon_momentum=1.0), r"muon_momentum must be in \[0, 1\)"),
    (dict(optimizer="muon", muon_momentum=-0.5), r"muon_momentum must be in \[0, 1\)"),
    (dict(optimizer="muon", muon_lr_ratio=-1.0), r"muon_lr_ratio must be a finite number >= 0"),
    (dict(optimizer="muon", muon_lr_ratio=float("inf")), r"muon_lr_ratio must be a finite number >= 0"),
])
def test_bad_muon_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(lmcore.LmcoreError, match=message):
        lmcore.Model(**SHAPE, **settings)
    with pytest.raises(TypeError, match="optimizer must be a string"):
        lmcore.Model(**SHAPE, optimizer=1)


# --- the command line ---

MUON = ["--optimizer", "muon", "--muon-lr", "0.03", "--muon-momentum", "0.9"]


@requires_corpus
@pytest.mark.parametrize("threads", ["1", "2"])
def test_muon_run_learns_and_resumes_bit_for_bit(tmp_path: Path, threads: str) -> None:
    n = 20
    plan = [*MUON, "--dropout", "0.1", "--lr-decay-iters", str(2 * n), "--threads", threads]
    train(tmp_path / "whole", *plan, "--max-iters", str(2 * n))
    train(tmp_path / "split", *plan, "--max-iters", str(n))
    assert iter_num(tmp_path / "split") == n
    resume(tmp_path / "split", "--max-iters", str(2 * n), "--threads", threads)

    assert_same_weights(tmp_path / "whole", tmp_path / "split")
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "split")
    assert metrics(tmp_path / "split") == metrics(tmp_path / "whole")
    tensors, meta = load_checkpoint(tmp_path / "whole" / "ckpt.safetensors")
    assert meta["optimizer"] == "muon" and meta["config"]["optimizer"] == "muon" and meta["adam_step"] == 2 * n
    assert meta["config"]["muon_lr"] == 0.03 and meta["config"]["muon_momentum"] == 0.9
    assert {k.split("/")[0] for k in tensors} == {"param", "muon_momentum", "adam_m", "adam_v"}
    assert np.abs(tensors["muon_momentum/transformer.h.0.mlp.c_fc.weight"]).max() > 0
    log = metrics(tmp_path / "whole")
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.5, log


@requires_corpus
@pytest.mark.parametrize("first, then", [("muon", "adamw"), ("adamw", "muon")])
def test_resume_refuses_another_optimizer(tmp_path: Path, first: str, then: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    train(out, "--optimizer", first, "--max-iters", "10")
    before = snapshot(out)
    capsys.readouterr()
    code = run_main(["--resume", "--out-dir", str(out), "--sample-tokens", "0", "--threads", "1",
                     "--max-iters", "20", "--optimizer", then])
    assert_one_line_error(code, capsys.readouterr().err,
                          rf"--optimizer cannot change on --resume \(the checkpoint has {first}\)")
    assert snapshot(out) == before


@requires_corpus
@pytest.mark.parametrize("args, message", [
    (["--optimizer", "sgd"], r'--optimizer must be one of adamw, muon, got "sgd"'),
    (["--optimizer", "muon", "--muon-momentum", "1.0"], r"--muon-momentum must be in \[0, 1\), got 1"),
    (["--optimizer", "muon", "--muon-momentum", "-0.1"], r"--muon-momentum must be in \[0, 1\)"),
    (["--optimizer", "muon", "--muon-lr", "-0.02"], r"--muon-lr must be a finite number >= 0, got -0.02"),
    (["--optimizer", "muon", "--muon-lr", "nan"], r"--muon-lr must be a finite number >= 0"),
    (["--optimizer", "muon", "--lr", "1e-300", "--muon-lr", "1e300"], r"--muon-lr 1e\+300 is too large beside --lr"),
])
def test_bad_muon_flags_are_one_line_errors(tmp_path: Path, args: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = run_main([*RECIPE, "--sample-tokens", "0", "--threads", "1", "--out-dir", str(out), "--max-iters", "5",
                     *args])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not out.exists()


@requires_corpus
def test_a_checkpoint_from_before_muon_loads_and_resumes_as_adamw(tmp_path: Path) -> None:
    """A recipe written before the optimizer fields existed means AdamW with their defaults."""
    out = tmp_path / "run"
    train(out, "--max-iters", "10", "--lr-decay-iters", "20")
    path = out / "ckpt.safetensors"
    tensors, meta = load_checkpoint(path)
    for name in LATER_FIELDS:
        meta["config"].pop(name)
    meta = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    # Sealed again, as the older lmcore wrote it.
    doc = json.dumps({**meta, DIGEST_KEY: state_digest(tensors, meta)})
    path.write_bytes(safetensors.numpy.save(tensors, {METADATA_KEY: doc}))
    model, _, cfg, loaded = model_from_checkpoint(path)
    assert model.optimizer == "adamw" and cfg.optimizer == "adamw" and cfg.muon_lr == RunConfig.muon_lr
    assert not LATER_FIELDS & loaded["config"].keys()
    resume(out, "--max-iters", "20")
    assert iter_num(out) == 20
    assert load_checkpoint(path)[1]["config"]["optimizer"] == "adamw"
