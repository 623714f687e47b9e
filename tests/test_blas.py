"""BLAS matmul (sgemm/dgemm, every transpose combination) against the naive reference and numpy."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmcore
from lmcore.blas import KERNEL_SIMD, BlasInfo

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


def test_blas_info_names_the_library_its_version_kernel_and_threads():
    info = lmcore.blas_info()
    assert info.name == "OpenBLAS" and re.fullmatch(r"\d+\.\d+\.\d+", info.version)
    assert tuple(map(int, info.version.split("."))) >= (0, 3, 30)  # scipy-openblas32, not a distribution's
    assert info.package.startswith("scipy-openblas32") and info.kernel
    assert info.cpu_simd in ("avx512", "avx2", "baseline") and info.threads == lmcore.num_threads()
    line = info.line()
    assert line.startswith(f"blas: OpenBLAS {info.version}") and info.kernel in line and "\n" not in line


def test_engine_runs_the_wheels_library_not_a_system_one():
    """The library in this process is scipy-openblas32's, loaded by lmcore itself (no LD_LIBRARY_PATH)."""
    import scipy_openblas32

    with open("/proc/self/maps") as maps:
        blas_files = {line.split()[-1] for line in maps if "openblas" in line and "/" in line}
    ours = os.path.realpath(scipy_openblas32.get_lib_dir())
    assert blas_files and all(os.path.realpath(f).startswith(ours) for f in blas_files if "scipy_openblas." in f), blas_files
    assert not any(os.path.basename(f).startswith("libopenblas") for f in blas_files), blas_files


def info_with(kernel: str, cpu_simd: str) -> BlasInfo:
    return BlasInfo(name="OpenBLAS", version="0.3.21", package="test", kernel=kernel,
                    kernel_simd=KERNEL_SIMD.get(kernel.lower()), cpu_simd=cpu_simd, threads=2)


@pytest.mark.parametrize("kernel, cpu, warns", [
    ("Prescott", "avx512", True), ("Haswell", "avx512", True), ("Zen", "avx512", True),
    ("SkylakeX", "avx512", False), ("Cooperlake", "avx512", False), ("Haswell", "avx2", False),
    ("Sandybridge", "avx2", True), ("Katmai", "avx2", True),
    ("NEOVERSEN1", "baseline", False), ("SomethingNew", "avx512", False),  # unknown: no guess
])
def test_a_kernel_older_than_the_cpu_is_a_warning_with_its_cost_and_fix(kernel, cpu, warns):
    info = info_with(kernel, cpu)
    assert (info.warning() is not None) == warns
    if warns:
        assert kernel in info.warning() and "slower" in info.warning()
        assert "pip install --upgrade scipy-openblas32" in info.warning()
        forced = info.warning(forced=kernel)
        assert f"OPENBLAS_CORETYPE={kernel}" in forced and "unset it" in forced
