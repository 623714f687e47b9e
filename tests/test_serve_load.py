"""The server under load and when things go away: 200 requests from 16 clients (every reply right,
none lost, memory flat), a full queue answered 503 at once, clients that leave in mid-stream (their
generation stops within a token or two), while queued or in the middle of their body, SIGTERM and Ctrl-C in mid-stream, and the
command's one-line errors. Every loop is bounded; nothing is timed."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from cli_helpers import ENV, assert_one_line_error
from serve_helpers import Server, train_chat_model, train_plain_model

WORDS = ["king", "rose", "love", "ghost", "heart", "crown", "blood"]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_chat_model(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_plain_model(tmp_path_factory.mktemp("long"), block=4096)


def ask(c: openai.OpenAI, word: str, stream: bool) -> tuple[str, str]:
    messages = [{"role": "user", "content": f"say {word}"}]
    if not stream:
        r = c.chat.completions.create(model="m", messages=messages, temperature=0)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in c.chat.completions.create(model="m", messages=messages, temperature=0, stream=True):
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_200_requests_from_16_clients(chat_dir):
    with Server("--out-dir", str(chat_dir), "--model-name", "m", "--parallel", "4", "--queue", "16") as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
        expected = {w: ask(c, w, stream=False) for w in WORDS}  # one at a time first
        assert all(finish == "stop" and text for text, finish in expected.values())
        jobs = [(WORDS[i % len(WORDS)], i % 2 == 0) for i in range(200)]
        with ThreadPoolExecutor(16) as pool:
            warm = list(pool.map(lambda job: ask(c, *job), jobs[:40]))
            rss_before = s.rss_kb()
            rest = list(pool.map(lambda job: ask(c, *job), jobs[40:]))
            rss_after = s.rss_kb()
        for (word, _), got in zip(jobs, warm + rest):
            assert got == expected[word], word  # the same reply alone or among 15 others: nothing lost or mixed
        assert len(re.findall(r"request \d+ \(chat\): .* stop after", s.log())) == 200 + len(WORDS)
        assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)  # flat (wide margin: allocator noise)


def stream_lines(client: httpx.Client, body: dict):
    """A streaming request kept open; returns the response (the caller reads and closes it)."""
    request = client.build_request("POST", "/v1/completions", json=body)
    return client.send(request, stream=True)


def test_a_full_queue_is_503_at_once_and_queued_requests_are_served(long_dir):
    with Server(str(long_dir / "ckpt.safetensors"), "--parallel", "1", "--queue", "1") as s, \
            httpx.Client(base_url=s.url, timeout=120) as http:
        running = stream_lines(http, {"prompt": "A", "stream": True, "seed": 1})
        lines = running.iter_lines()  # (kept: a dropped iterator closes the connection)
        first = next(lines)  # generating now, for about a second
        assert first.startswith("data: ")
        queued: list[httpx.Response] = []
        waiter = threading.Thread(target=lambda: queued.append(http.post("/v1/completions", json={"prompt": "B", "max_tokens": 3})))
        waiter.start()
        s.wait_for_log(r"request 2 \(completion\) waits for a slot")
        refused = http.post("/v1/completions", json={"prompt": "C", "max_tokens": 3})
        assert "request 1 (completion): 1 prompt" not in s.log()  # refused while the first one still runs
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "server_overloaded"
        rest = list(lines)
        running.close()
        assert [line for line in rest if line][-1] == "data: [DONE]"
        finish = json.loads([line for line in rest if line.startswith("data: {")][-1][6:])["choices"][0]["finish_reason"]
        assert finish == "length"
        waiter.join(120)
        assert queued and queued[0].status_code == 200 and queued[0].json()["usage"]["completion_tokens"] == 3


def cancelled(log: str) -> list[tuple[int, int]]:
    """(completion tokens, tokens after the client left) of every cancelled request in the log."""
    return [(int(a), int(b)) for a, b in
            re.findall(r"\+ (\d+) completion tokens, cancelled after [\d.]+ s, (\d+) token\(s\) after the client left", log)]


def test_a_client_that_leaves_mid_stream_stops_its_generation(long_dir):
    with Server(str(long_dir / "ckpt.safetensors"), "--parallel", "2") as s, httpx.Client(base_url=s.url, timeout=120) as http:
        other = threading.Thread(target=lambda: done.append(http.post("/v1/completions", json={"prompt": "B", "max_tokens": 2000})))
        done: list[httpx.Response] = []
        other.start()
        leaving = stream_lines(http, {"prompt": "A", "stream": True})
        lines = leaving.iter_lines()
        for _ in range(5):
            next(lines)
        leaving.close()  # the client goes away after a few tokens
        s.wait_for_log(r"cancelled after")
        [(made, after)] = cancelled(s.log())
        assert made < 4096 and after <= 2, s.log()
        other.join(120)
        assert done[0].status_code == 200 and done[0].json()["usage"]["completion_tokens"] == 2000  # the other goes on


def test_a_client_that_leaves_a_plain_request_or_the_queue_is_dropped(long_dir):
    with Server(str(long_dir / "ckpt.safetensors"), "--parallel", "1") as s, httpx.Client(base_url=s.url, timeout=120) as http:
        running = stream_lines(http, {"prompt": "A", "stream": True})
        lines = running.iter_lines()
        next(lines)
        # A plain (not streaming) request, queued behind it; its client hangs up.
        body = json.dumps({"prompt": "B"}).encode()
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as raw:
            raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            s.wait_for_log(r"request 2 \(completion\) waits for a slot")
        s.wait_for_log(r"request 2 \(completion\): 0 prompt \+ 0 completion tokens, cancelled")
        running.close()
        s.wait_for_log(r"request 1 \(completion\): .* cancelled")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_the_server_cleanly_mid_stream(long_dir, sig):
    with Server(str(long_dir / "ckpt.safetensors")) as s:
        with httpx.Client(base_url=s.url, timeout=120) as http:
            stream = stream_lines(http, {"prompt": "A", "stream": True})
            events = stream.iter_lines()
            next(events)
            s.proc.send_signal(sig)
            lines = [line for line in events if line]
            stream.close()
        assert lines[-1].startswith('data: {"error"') and "shutting down" in lines[-1]
        assert s.proc.wait(60) == 0
        assert s.proc.stdout.read().strip().startswith("lmcore serve: stopped")
        assert "Traceback" not in s.log()


def test_command_errors_are_one_line(tmp_path, chat_dir):
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lmcore.serve", *args], env=ENV, capture_output=True, text=True,
                              timeout=120)

    r = serve("--out-dir", str(tmp_path))
    assert_one_line_error(r.returncode, r.stderr, "no checkpoint at")
    r = serve("--out-dir", str(chat_dir), "--parallel", "0")
    assert_one_line_error(r.returncode, r.stderr, "--parallel must be at least 1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = serve("--out-dir", str(chat_dir), "--port", str(taken.getsockname()[1]))
        assert_one_line_error(r.returncode, r.stderr, "cannot listen on 127.0.0.1")


def test_a_client_that_leaves_in_the_middle_of_its_body_is_no_fault(long_dir):
    with Server(str(long_dir / "ckpt.safetensors")) as s:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", s.port), timeout=30) as raw:
                raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "A", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
        assert "Traceback" not in s.log() and "Exception" not in s.log(), s.log()
