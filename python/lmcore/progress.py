"""Progress of a long job (training: step, loss, tokens/s and ETA; reading or tokenizing a corpus:
its own detail). On a terminal it is tqdm's bar, redrawn in place; when the output is a file or a
pipe, a plain line at most every 10% (a log should not fill with redraws)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None) -> None:
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.bar = (tqdm(total=total, initial=start, file=self.stream, dynamic_ncols=True, leave=True,
                         bar_format="{bar:24} {desc} ETA {remaining}") if self.stream.isatty() else None)
        self.t0 = time.perf_counter()
        self.next_plain = start

    def update(self, step: int, loss: float, tok_s: float) -> None:
        self.show(step, f"step {step}/{self.total} loss {loss:.4f} {tok_s / 1000:.1f}k tok/s")

    def show(self, done: int, detail: str) -> None:
        """Move to ``done`` of ``total`` units, with ``detail`` before the ETA."""
        if self.bar is not None:
            self.bar.set_description_str(detail, refresh=False)
            self.bar.update(done - self.bar.n)
        elif done >= self.next_plain or done == self.total:
            rate = (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else 0.0
            bar = "#" * int(done / max(1, self.total) * 24)
            self.stream.write(f"[{bar:<24}] {detail} ETA {_duration(eta)}\n")
            self.next_plain = done + max(1, self.total // 10)

    def note(self, message: str) -> None:
        """A line of its own that stays above the bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
