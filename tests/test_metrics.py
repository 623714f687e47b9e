"""Tests for lmcore.training.metrics: JSON-lines log, RSS probe, loss plot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lmcore.training import metrics
from lmcore.training.metrics import MetricsLog, plot_losses, read_metrics, rss_mb


def test_log_is_flushed_per_line_and_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    log = MetricsLog(path)
    log.log({"step": 0, "train_loss": np.float32(4.17)}, lr=3e-4)
    # Readable before close: a killed run keeps what it logged.
    assert json.loads(path.read_text().splitlines()[0]) == {"step": 0, "train_loss": pytest.approx(4.17), "lr": 3e-4}
    written = log.log(step=1, train_loss=math.nan, val_loss=math.inf, tags=[1.0, math.nan])
    log.close()
    assert written == {"step": 1, "train_loss": None, "val_loss": None, "tags": [1.0, None]}
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_log_appends_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.log(step=1)
    with MetricsLog(path) as log:
        log.log(step=2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_read_metrics_skips_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_lo')
    assert read_metrics(path) == [{"step": 1, "train_loss": 2.0}]


def test_rss_mb_is_plausible() -> None:
    before = rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    after = rss_mb()
    assert 1.0 < before < 1e6
    if sys.platform.startswith("linux"):
        assert after - before > 32
    del block


def _write_run(path: Path) -> None:
    with MetricsLog(path) as log:
        for step in range(0, 200, 10):
            log.log(step=step, train_loss=4.2 * math.exp(-step / 80) + 1.0)
            if step % 50 == 0:
                log.log(step=step, val_loss=4.3 * math.exp(-step / 90) + 1.1)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    # Signature, then the IHDR chunk, and the IEND chunk closing the file: not truncated.
    return data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"


def test_plot_losses_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "metrics.jsonl")
    png = tmp_path / "plots" / "loss.png"
    assert plot_losses(tmp_path / "metrics.jsonl", png, wait=True) is True
    assert _is_png(png)
    # Written through a temp file renamed into place: nothing else is left behind.
    assert [p.name for p in png.parent.iterdir()] == ["loss.png"]
    assert metrics._plot_proc is None  # reaped


def test_plot_subprocess_entry_point(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "metrics.jsonl")
    png = tmp_path / "loss.png"
    cmd = [sys.executable, "-m", "lmcore.training.metrics", "plot", str(tmp_path / "metrics.jsonl"), str(png)]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    assert _is_png(png)
    assert subprocess.run([sys.executable, "-m", "lmcore.training.metrics"], capture_output=True).returncode == 2


def test_plot_losses_does_not_block_and_keeps_one_in_flight(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "metrics.jsonl")
    png = tmp_path / "loss.png"
    t0 = time.perf_counter()
    assert plot_losses(tmp_path / "metrics.jsonl", png) is True
    first = metrics._plot_proc
    assert first is not None
    # A redraw while the first is still running is skipped, not queued or blocked on.
    assert plot_losses(tmp_path / "metrics.jsonl", png) is False
    assert metrics._plot_proc is first
    assert time.perf_counter() - t0 < 0.5  # the plot itself (matplotlib import) takes longer
    # The final plot waits for the one in flight, then draws again and reaps it.
    assert plot_losses(tmp_path / "metrics.jsonl", png, wait=True) is True
    assert first.returncode == 0
    assert metrics._plot_proc is None
    assert _is_png(png)


def test_parent_never_imports_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "metrics.jsonl")
    png = tmp_path / "loss.png"
    code = textwrap.dedent(
        f"""
        import sys
        from lmcore.training.metrics import plot_losses
        assert plot_losses({str(tmp_path / "metrics.jsonl")!r}, {str(png)!r}) is True
        assert plot_losses({str(tmp_path / "metrics.jsonl")!r}, {str(png)!r}, wait=True) is True
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib")
        assert not loaded, loaded
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert _is_png(png)


def test_plot_child_is_reaped_at_exit(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "metrics.jsonl")
    png = tmp_path / "loss.png"
    # The parent exits right after starting a redraw: atexit waits for it, so the plot exists.
    code = f"from lmcore.training.metrics import plot_losses; plot_losses({str(tmp_path / 'metrics.jsonl')!r}, {str(png)!r})"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    assert _is_png(png)


def test_plot_losses_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_run(tmp_path / "metrics.jsonl")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png") is False
    assert not (tmp_path / "loss.png").exists()


def test_plot_losses_without_losses(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with MetricsLog(tmp_path / "metrics.jsonl") as log:
        log.log(step=0, rss_mb=12.0)
    with pytest.warns(UserWarning, match="no train_loss"):
        assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png") is False
