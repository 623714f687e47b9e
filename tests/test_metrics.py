"""Tests for lmcore.metrics: JSON-lines log, RSS probe, loss plot."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from lmcore.metrics import MetricsLog, plot_losses, read_metrics, rss_mb


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


def test_plot_losses_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "metrics.jsonl")
    png = tmp_path / "plots" / "loss.png"
    assert plot_losses(tmp_path / "metrics.jsonl", png) is True
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
