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
