"""Helpers of the serving tests: small models trained here (a chat model, a plain one with a long
window), and ``python -m lmcore.serve`` run as a child process on a free port of 127.0.0.1 (the
server picks it: ``--port 0``, and prints it), stopped at the end of its test, bounded in time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import ENV, run_main
from test_sft import SFT, write_chats

START_TIMEOUT = 120.0  # loading models on a busy 2-core machine


def train_chat_model(out: Path) -> Path:
    """test_chat.py's echo model: a tiny chat model (window 96) that answers "say W" with "W W."."""
    chats = write_chats(out / "chats.jsonl", n=120)
    assert run_main([*SFT, "--data", str(chats), "--max-iters", "300", "--eval-interval", "300", "--lr", "1e-2",
                     "--block-size", "96", "--ckpt-interval", "300", "--sample-tokens", "0", "--threads", "1",
                     "--out-dir", str(out)]) == 0
    return out


def train_plain_model(out: Path, block: int = 4096) -> Path:
    """A tiny character model without chat markers, one step: its window is long, so a reply of
    the whole window takes a while (about a second here) and can be interrupted on the way."""
    assert run_main(["--tiny", "--max-iters", "1", "--block-size", str(block), "--batch-size", "1",
                     "--eval-interval", "1", "--eval-iters", "1", "--sample-tokens", "0", "--threads", "1",
                     "--out-dir", str(out)]) == 0
    return out


class Server:
    """``python -m lmcore.serve ARGS --port 0`` with its log (stderr) in a file."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix="lmcore-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "lmcore.serve", *args, "--port", "0", "--threads", "1"],
                                     stdout=subprocess.PIPE, stderr=self.log_file, text=True, encoding="utf-8",
                                     env={**ENV, **(env or {})})
        self.banner = self._first_line()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", self.banner)
        if not found:
            self.stop()
            pytest.fail(f"the server printed no address: {self.banner!r}; log: {self.log()}")
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _first_line(self) -> str:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not line or not line[0]:
            self.stop()
            pytest.fail(f"the server did not start (exit {self.proc.returncode}); log: {self.log()}")
        return line[0]

    def log(self) -> str:
        return Path(self.log_file.name).read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (found := re.search(pattern, self.log())) is not None:
                return found
            time.sleep(0.02)
        pytest.fail(f"no {pattern!r} in the server's log after {timeout}s: {self.log()}")

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log_file.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        os.unlink(self.log_file.name)
