"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import QUIET, RECIPE, cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 20-step run of the command line (read-only: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = cli(*RECIPE, *QUIET, "--out-dir", str(out), "--max-iters", "20")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "done: 20 steps" in done.stdout
    return out
