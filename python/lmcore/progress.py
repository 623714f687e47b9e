"""A dependency-free progress line (training: step, loss, tokens/s and ETA; any other long job: its
own detail and ETA), redrawn in place on a terminal, printed as plain lines (at most every 10%)
when the output is a file or a pipe."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int, start: int = 0, stream=None) -> None:
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.next_plain = start
        self.width = 24

    def update(self, step: int, loss: float, tok_s: float) -> None:
        self.show(step, f"step {step}/{self.total} loss {loss:.4f} {tok_s / 1000:.1f}k tok/s")

    def show(self, done: int, detail: str) -> None:
        """Redraw the bar at ``done`` of ``total`` units with ``detail`` before the ETA."""
        rate = (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        frac = done / max(1, self.total)
        bar = "#" * int(frac * self.width)
        line = f"[{bar:<{self.width}}] {detail} ETA {_duration(eta)}"
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif done >= self.next_plain or done == self.total:
            self.stream.write(line + "\n")
            self.next_plain = done + max(1, self.total // 10)

    def note(self, message: str) -> None:
        """A line of its own that stays above the bar."""
        self.stream.write(("\r\033[K" if self.tty else "") + message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
