"""Run metrics for lmcore: a JSON-lines log, process memory, and a loss plot.

``MetricsLog`` appends one JSON object per line to ``metrics.jsonl`` and
flushes every line, so a run that is killed keeps everything it logged and
the file can be tailed while training.  ``plot_losses`` draws the train and
validation loss curves from such a log into a PNG (matplotlib, optional).

Log convention read by ``plot_losses``: records carry ``"step"`` and
``"train_loss"`` and/or ``"val_loss"``; any other fields are kept but ignored.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np


def _json_safe(value: Any) -> Any:
    # NaN/Infinity are not JSON: a diverged loss is logged as null so that
    # every line stays readable by strict parsers (jq, serde_json, ...).
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class MetricsLog:
    """Append-only JSON-lines log; use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so a resumed run continues the same file.
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the log)

    def log(self, record: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Write one record (``record`` merged with keyword fields); returns what was written."""
        entry: dict[str, Any] = _json_safe({**(record or {}), **fields})
        self._f.write(json.dumps(entry, allow_nan=False) + "\n")
        self._f.flush()
        return entry

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a metrics log; a torn last line (killed mid-write) is skipped."""
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def rss_mb() -> float:
    """Resident set size of this process in MiB (current on Linux, peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        # ru_maxrss is the PEAK, in KiB on Linux but bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [
        (float(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_losses(jsonl_path: str | os.PathLike[str], png_path: str | os.PathLike[str]) -> bool:
    """Draw train/val loss against step into ``png_path``.

    Returns False (with a warning) when matplotlib is not installed or the log
    has no losses; plotting is a convenience and must never fail a run.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: no display on training machines or CI
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed; skipping the loss plot", stacklevel=2)
        return False

    records = read_metrics(jsonl_path)
    train, val = _series(records, "train_loss"), _series(records, "val_loss")
    if not train[0] and not val[0]:
        warnings.warn(f"no train_loss/val_loss records in {jsonl_path}; skipping the loss plot", stacklevel=2)
        return False

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        if train[0]:
            ax.plot(*train, label="train", linewidth=1.0, alpha=0.8)
        if val[0]:
            ax.plot(*val, label="val", marker="o", markersize=3, linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/char)")
        ax.set_title(Path(jsonl_path).parent.name or "lmcore")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png = Path(png_path)
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
    finally:
        plt.close(fig)
    return True
