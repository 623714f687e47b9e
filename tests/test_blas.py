"""BLAS matmul (sgemm/dgemm, every transpose combination) against the naive reference and numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmcore

dims = st.integers(1, 40)


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, k=dims, trans_a=st.booleans(), trans_b=st.booleans(), dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**32 - 1))
def test_matmul_matches_reference_and_numpy(m, n, k, trans_a, trans_b, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    got = lmcore.matmul(a, b, trans_a, trans_b)
    ref = lmcore.matmul_reference(a, b, trans_a, trans_b)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    tol = 1e-4 if dtype == "float32" else 1e-12
    assert got.dtype == np.dtype(dtype) and got.shape == (m, n)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(k))
    np.testing.assert_allclose(ref, expected, rtol=tol, atol=tol * np.sqrt(k))


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_row_products_through_gemv(trans_a, trans_b, threads):
    """A single output row (the KV cache's one-token steps) goes through gemv, not gemm; a large
    one is split by columns across the threads (uneven chunks: n is odd)."""
    rng = np.random.default_rng(threads)
    n, k = 1031, 130  # n * k above the split threshold
    a = rng.normal(size=(k, 1) if trans_a else (1, k))
    b = rng.normal(size=(n, k) if trans_b else (k, n))
    before = lmcore.num_threads()
    try:
        lmcore.set_num_threads(threads)
        got = lmcore.matmul(a, b, trans_a, trans_b)
    finally:
        lmcore.set_num_threads(before)
    np.testing.assert_allclose(got, lmcore.matmul_reference(a, b, trans_a, trans_b), rtol=1e-12, atol=1e-12)


def test_matmul_reads_non_contiguous_views():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 8))[:, ::2]  # a strided view
    b = rng.normal(size=(4, 3))
    np.testing.assert_allclose(lmcore.matmul(a, b), a @ b, rtol=1e-12)


@pytest.mark.parametrize(
    "a, b, err",
    [
        (np.ones((2, 3)), np.ones((4, 2)), ValueError),
        (np.ones(3), np.ones((3, 2)), ValueError),
        (np.ones((2, 3), np.float32), np.ones((3, 2)), TypeError),
        (np.ones((2, 3), np.int64), np.ones((3, 2)), TypeError),
    ],
)
def test_matmul_rejects_bad_input(a, b, err):
    with pytest.raises(err):
        lmcore.matmul(a, b)
