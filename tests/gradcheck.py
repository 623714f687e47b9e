"""Finite-difference gradient checking shared by the op and model tests.

Every check compares the engine's analytic gradient with central differences in float64. The
tolerance is relative 1e-6, with an absolute floor of 1e-8 for gradients that are (nearly) zero:
there a relative error only measures the rounding noise of the difference quotient, about
1e-16 * |f| / STEP, which for the summed test scalars reaches a few 1e-9.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

REL_TOL = 1e-6
ABS_FLOOR = 1e-8
STEP = 1e-5


def numeric_grad(f: Callable[[], float], x: np.ndarray, step: float = STEP) -> np.ndarray:
    """d f / d x by central differences, perturbing `x` in place (and restoring it)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + step
        up = f()
        flat[i] = orig - step
        down = f()
        flat[i] = orig
        gflat[i] = (up - down) / (2 * step)
    return grad


def assert_grad_close(analytic: np.ndarray, numeric: np.ndarray, what: str) -> None:
    err = np.abs(analytic - numeric)
    allowed = REL_TOL * np.maximum(np.abs(analytic), np.abs(numeric)) + ABS_FLOOR
    bad = np.argwhere(err > allowed)
    if bad.size:
        i = tuple(bad[0])
        raise AssertionError(
            f"{what}: {len(bad)} entries off; first at {i}: analytic {analytic[i]!r} "
            f"vs numeric {numeric[i]!r} (max abs err {err.max():.3e})"
        )


def perturb_weights(model, rng: np.random.Generator, scale: float = 0.3) -> None:  # noqa: ANN001 (a Model)
    """Move every weight off its initial value (zeros, ones, 0.02-wide normals), so every path of
    the model carries a gradient visible to finite differences."""
    for name in model.param_names():
        p = model.get_param(name)
        model.set_param(name, p + scale * rng.normal(size=p.shape))


def assert_model_grads_match(model, x: np.ndarray, y: np.ndarray) -> float:  # noqa: ANN001 (a Model)
    """Every parameter's gradient from a float64 `train_step(x, y, lr=0)` (gradients computed,
    weights unchanged) against central differences of `forward(x, y)`'s loss; returns the loss."""
    loss, _ = model.train_step(x, y, lr=0.0)
    assert abs(loss - model.forward(x, y)[1]) <= 1e-14 * abs(loss)
    for name in model.param_names():
        p = model.get_param(name)

        def f() -> float:
            model.set_param(name, p)
            return model.forward(x, y)[1]

        numeric = numeric_grad(f, p)
        model.set_param(name, p)
        assert_grad_close(model.get_grad(name), numeric, name)
    return loss
