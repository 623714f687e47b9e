"""Run metrics for lmcore: a JSON-lines log, process memory, and a loss plot.

``MetricsLog`` appends one JSON object per line to ``metrics.jsonl`` and
flushes every line, so a run that is killed keeps everything it logged and
the file can be tailed while training.  ``plot_losses`` draws the train and
validation loss curves from such a log into a PNG (matplotlib, optional) in a
child process (``python -m lmcore.training.metrics plot METRICS_JSONL PNG``), so the
trainer never imports matplotlib and never waits for a redraw.

Log convention read by ``plot_losses``: records carry ``"step"`` and
``"train_loss"`` and/or ``"val_loss"``; any other fields are kept but ignored.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import math
import os
import subprocess
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

    def __init__(self, path: str | os.PathLike[str], *, write: bool = True) -> None:
        self.path = Path(path)
        self._f: Any = None  # write=False (a data-parallel run's other ranks): records go nowhere
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Append, so a resumed run continues the same file.
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the log)

    def log(self, record: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Write one record (``record`` merged with keyword fields); returns what was written."""
        entry: dict[str, Any] = _json_safe({**(record or {}), **fields})
        if self._f is not None:
            self._f.write(json.dumps(entry, allow_nan=False) + "\n")
            self._f.flush()
        return entry

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
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


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop the records a run will log again: those after the checkpoint being resumed, or all of
    them when it starts at step 0 (a fresh run, or one stopped before its first step)."""
    if path.exists():
        keep = [r for r in read_metrics(path) if 0 < last_step and r.get("step", 0) <= last_step]
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # left by a run killed here: the log below appends
        with MetricsLog(tmp) as log:
            for r in keep:
                log.log(r)
        os.replace(tmp, path)


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


# The loss plot is drawn in a child process: importing matplotlib costs the
# trainer ~50 MB of peak RSS, and drawing takes long enough to stall a step.
# At most one plot child is in flight per process; ``_plot_proc`` holds it so it
# can be reaped (no zombies) by the next call or at interpreter exit.
_plot_proc: subprocess.Popen[bytes] | None = None
_WAIT_TIMEOUT_S = 120.0


def _reap(timeout: float | None) -> bool:
    """Wait up to ``timeout`` s (None: don't block) for the plot child; True if none is left running."""
    global _plot_proc
    proc = _plot_proc
    if proc is None:
        return True
    try:
        if timeout is None:
            if proc.poll() is None:
                return False
        else:
            proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # a hung plot must not hang the trainer; its temp file is left, never loss.png
        proc.wait()
    _plot_proc = None
    return True


atexit.register(_reap, _WAIT_TIMEOUT_S)  # let the last redraw finish and reap it


def _spawn_plot(jsonl_path: Path, png_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    # The child must find lmcore even when this process got it through sys.path tricks
    # (appended, so it never shadows the standard library or an explicit PYTHONPATH).
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), pkg_parent) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "lmcore.training.metrics", "plot", str(jsonl_path), str(png_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # a Ctrl-C meant for the trainer does not tear a half-drawn plot
    )


def plot_losses(
    jsonl_path: str | os.PathLike[str], png_path: str | os.PathLike[str], *, wait: bool = False
) -> bool:
    """Redraw the train/val loss curves of ``jsonl_path`` into ``png_path`` in a child process.

    Never imports matplotlib here.  With ``wait=False`` (default, for use during
    training) it returns at once: True if a redraw was started, False if it was
    skipped because the previous one is still running (the next call redraws
    everything, so nothing is lost).  With ``wait=True`` (use it for the final
    plot) it waits for any redraw in flight, then draws and waits; True if the
    PNG was written.  The PNG is replaced atomically, never seen half-written.
    Returns False (with a warning) when matplotlib is not installed or the log
    has no losses; plotting is a convenience and must never fail a run.
    """
    global _plot_proc
    if importlib.util.find_spec("matplotlib") is None:  # finds, does not import
        warnings.warn("matplotlib is not installed; skipping the loss plot", stacklevel=2)
        return False
    records = read_metrics(jsonl_path)
    if not _series(records, "train_loss")[0] and not _series(records, "val_loss")[0]:
        warnings.warn(f"no train_loss/val_loss records in {jsonl_path}; skipping the loss plot", stacklevel=2)
        return False
    if not _reap(_WAIT_TIMEOUT_S if wait else None):
        return False  # previous redraw still running: skip this one
    try:
        _plot_proc = proc = _spawn_plot(Path(jsonl_path), Path(png_path))
    except OSError as e:
        warnings.warn(f"could not start the loss plot process: {e}", stacklevel=2)
        return False
    if not wait:
        return True
    _reap(_WAIT_TIMEOUT_S)
    return proc.returncode == 0


def _draw(jsonl_path: Path, png_path: Path) -> int:
    """Child-process side of ``plot_losses``; returns the exit status (0: PNG written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: no display on training machines or CI
        import matplotlib.pyplot as plt
    except ImportError:
        print("lmcore.training.metrics: matplotlib is not installed; skipping the loss plot", file=sys.stderr)
        return 1

    records = read_metrics(jsonl_path)
    train, val = _series(records, "train_loss"), _series(records, "val_loss")
    if not train[0] and not val[0]:
        return 1

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.{os.getpid()}.tmp")
    try:
        if train[0]:
            ax.plot(*train, label="train", linewidth=1.0, alpha=0.8)
        if val[0]:
            ax.plot(*val, label="val", marker="o", markersize=3, linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(jsonl_path.resolve().parent.name or "lmcore")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        os.replace(tmp, png_path)  # atomic: readers see the old plot or the new one
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return 0


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "plot":
        print("usage: python -m lmcore.training.metrics plot METRICS_JSONL PNG", file=sys.stderr)
        return 2
    try:
        return _draw(Path(argv[1]), Path(argv[2]))
    except Exception as e:  # noqa: BLE001 (report, never a traceback wall in the training log)
        print(f"lmcore.training.metrics: loss plot failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
