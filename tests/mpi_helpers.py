"""Helpers of the MPI tests: where mpirun is, the environment its ranks need here (root, one
machine), and running ``python -m lmcore.train`` or a script on K ranks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli_helpers import ENV, QUIET, RECIPE

BIN = Path(sys.executable).parent
MPIRUN = shutil.which("mpirun", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def _mpi4py_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401, PLC0415
    except ImportError as e:
        return f"mpi4py is not installed ({e}); bash scripts/setup.sh installs it"
    return None if MPIRUN else "no mpirun (bash scripts/setup.sh installs Open MPI)"


requires_mpi = pytest.mark.skipif(_mpi4py_missing() is not None, reason=str(_mpi4py_missing()))

# The machine runs as root (Open MPI refuses that unless told); ranks may share its 2 cores.
MPI_ENV = {**ENV, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}


def mpirun_args(ranks: int, *command: str) -> list[str]:
    assert MPIRUN is not None
    return [MPIRUN, "-n", str(ranks), "-x", "LMCORE_DATA_DIR", "-x", "XDG_CACHE_HOME", "-x", "PYTHONUTF8",
            *command]


def train_args(out_dir: Path, *args: str, recipe: bool = True) -> list[str]:
    return [sys.executable, "-m", "lmcore.train", *(RECIPE if recipe else []), *QUIET, "--out-dir", str(out_dir),
            *args]


def mpi_train(ranks: int, out_dir: Path, *args: str, recipe: bool = True, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m lmcore.train`` on ``ranks`` MPI ranks, to its end."""
    return subprocess.run(mpirun_args(ranks, *train_args(out_dir, *args, recipe=recipe)), env=env or MPI_ENV,
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout, stdin=subprocess.DEVNULL)


def mpi_spawn(ranks: int, out_dir: Path, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(mpirun_args(ranks, *train_args(out_dir, *args)), env=kwargs.pop("env", MPI_ENV),
                            text=True, encoding="utf-8", stdin=subprocess.DEVNULL, **kwargs)


def rank_pid(rank: int, marker: str) -> int | None:
    """The pid of MPI rank ``rank`` of the job whose command line holds ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and "lmcore.train" in cmdline and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| / |a| over a tensor, |a| floored at the tensor's RMS: a weight that
    happens to lie near zero is compared at the scale of its tensor (a few ulps of difference in a
    weight of 1e-5 would be a large fraction of it, at any precision)."""
    floor = float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) or 1e-30
    return float((np.abs(a - b) / np.maximum(np.abs(a), floor)).max())


def worst_weight_error(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
    """The largest ``relative_error`` over every weight of two runs, and its tensor's name.

    The keys' third of each ``attn.c_attn.bias`` is left out: adding a constant to every key of a
    query shifts all its scores alike, which softmax ignores, so that bias's exact gradient is 0
    and what the engine computes is rounding noise, different for any other order of summation;
    AdamW turns noise into steps (m / sqrt(v) is about 1 whatever the size), so those entries wander
    differently in any two runs that sum differently (and change nothing else: the scores of a
    query still shift alike)."""
    assert a.keys() == b.keys()
    worst = (0.0, "")
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("attn.c_attn.bias"):
            c = x.shape[0] // 3
            x, y = np.concatenate([x[:c], x[2 * c:]]), np.concatenate([y[:c], y[2 * c:]])
        worst = max(worst, (relative_error(x, y), name))
    return worst
