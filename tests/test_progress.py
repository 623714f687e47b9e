"""The progress display: tqdm's bar on a terminal, a plain line at most every 10% otherwise."""

from __future__ import annotations

import io

from lmcore.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_redrawn_bar_and_notes_above_it() -> None:
    out = Terminal()
    p = Progress(50, stream=out)
    for i in range(1, 51):
        p.update(i, 1.0 / i, 2000.0)
        if i == 25:
            p.note("step 25: val loss 1.0")
    p.close()
    text = out.getvalue()
    assert "\r" in text and "step 50/50 loss 0.0200 2.0k tok/s" in text
    assert "step 25: val loss 1.0\n" in text


def test_a_file_gets_at_most_one_line_per_tenth() -> None:
    out = io.StringIO()
    p = Progress(1000, stream=out)
    for i in range(1, 1001):
        p.update(i, 1.0, 1000.0)
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and 10 <= len(lines) <= 11
    assert lines[-1].startswith("[########################] step 1000/1000 loss 1.0000 1.0k tok/s ETA ")
