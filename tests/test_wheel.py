"""`maturin build --release` makes a wheel that installs with pip into a clean virtualenv and
trains: the engine's BLAS comes from the scipy-openblas32 dependency pip installs beside it,
loaded from that virtualenv (no system OpenBLAS, no LD_LIBRARY_PATH)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import ENV, requires_corpus

ROOT = Path(__file__).resolve().parents[1]
MATURIN = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")


@pytest.mark.slow
@requires_corpus
@pytest.mark.skipif(MATURIN is None, reason="maturin is not installed")
def test_wheel_installs_into_a_clean_virtualenv_and_trains(tmp_path):
    build_env = {**os.environ, "PYO3_PYTHON": sys.executable, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    subprocess.run([MATURIN, "build", "--release", "--quiet", "--out", str(tmp_path / "dist")], cwd=ROOT,
                   env=build_env, check=True, capture_output=True, timeout=900)
    (wheel,) = (tmp_path / "dist").glob("lmcore-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=900)
    # Run from an empty folder, so nothing of the source tree can be imported instead.
    env = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH")}
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run([str(python), "-m", "lmcore.train", "--tiny", "--max-iters", "3", "--sample-tokens", "0",
                          "--out-dir", str(work / "out")], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "blas: OpenBLAS" in run.stdout and (work / "out" / "model.safetensors").is_file()
    where = subprocess.run([str(python), "-c", "import lmcore, scipy_openblas32; print(lmcore.__file__); "
                            "print(scipy_openblas32.get_lib_dir()); "
                            "print(*sorted({l.split()[-1] for l in open('/proc/self/maps') if 'openblas' in l}), sep='\\n')"],
                           cwd=work, env=env, capture_output=True, text=True, check=True, timeout=120)
    package, lib_dir, *blas_files = where.stdout.split("\n")
    assert package.startswith(str(venv)), package
    assert lib_dir.startswith(str(venv)) and blas_files, where.stdout
    assert all(f.startswith(lib_dir) for f in blas_files if f), blas_files
