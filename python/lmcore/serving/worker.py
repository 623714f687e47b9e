"""The engine's one thread: ``parallel`` slots, each a model with its own key/value cache, taking
one token in turn (round robin), and a bounded queue of requests waiting for a slot.

Only this thread calls the models (the engine releases the GIL while it computes, so the HTTP
side keeps serving meanwhile). A request talks to it through a ``Job``: its events (text, the end,
an error) are put on the job's asyncio queue from this thread with ``call_soon_threadsafe``, and
``cancel()`` (a client that left) is seen before the next token, so at most the token being
computed when the client left is made after it (the log line counts them).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

from lmcore import Model
from lmcore.serving.errors import overloaded, server_error, shutting_down
from lmcore.serving.schemas import Generation
from lmcore.serving.sequence import Sequence
from lmcore.tokenizer import Tokenizer

_ids = itertools.count(1)


class Job:
    def __init__(self, gen: Generation, loop: asyncio.AbstractEventLoop) -> None:
        self.gen, self.loop = gen, loop
        self.number = next(_ids)
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.cancelled = False
        self.after_cancel = 0  # tokens made after cancel() (for the log)
        self.worker: Worker | None = None
        self.start = time.perf_counter()

    def post(self, *event: Any) -> None:
        """From the engine's thread: ("text", str), ("done", finish_reason, prompt_tokens,
        completion_tokens) or ("error", ApiError)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (the server is stopping): nobody listens
            pass

    def cancel(self) -> None:
        """From the HTTP side: the client left; stop (or never start) generating."""
        if not self.cancelled:
            self.cancelled = True
            if self.worker is not None:
                self.worker.forget(self)


class Slot:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.job: Job | None = None
        self.seq: Sequence | None = None


class Worker:
    def __init__(self, models: list[Model], tokenizer: Tokenizer, window: int, end_id: int | None,
                 queue_size: int, log: bool = True) -> None:
        self.slots = [Slot(m) for m in models]
        self.tokenizer, self.window, self.end_id = tokenizer, window, end_id
        self.queue_size, self.log = queue_size, log
        self.waiting: deque[Job] = deque()
        self.busy = 0  # slots holding a job
        self.closing = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="lmcore-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` or refuse it at once (503: full, or shutting down)."""
        with self.cond:
            if self.closing:
                raise shutting_down()
            if self.busy + len(self.waiting) >= len(self.slots) + self.queue_size:
                raise overloaded()
            job.worker = self
            self.waiting.append(job)
            self.cond.notify()
            waits = self.busy + len(self.waiting) > len(self.slots)
        if waits and self.log:
            print(f"lmcore serve: request {job.number} ({job.gen.kind}) waits for a slot", file=sys.stderr, flush=True)

    def forget(self, job: Job) -> None:
        """A cancelled job that still waits leaves the queue now (a running one stops at its next turn)."""
        with self.cond:
            if job in self.waiting:
                self.waiting.remove(job)
                self._end(job, "cancelled", 0, 0)

    def begin_close(self) -> None:
        """Stop taking jobs; every waiting and running one ends with a shutting-down error (safe
        in a signal handler: it never waits for the engine)."""
        if not self.cond.acquire(timeout=0.5):
            self.closing = True  # (the lock is busy: the thread sees the flag at its next turn)
            return
        try:
            self.closing = True
            for job in self.waiting:
                job.post("error", shutting_down())
            self.waiting.clear()
            self.cond.notify()
        finally:
            self.cond.release()

    def close(self, wait: float = 10.0) -> None:
        """Stop (``begin_close``) and wait for the engine's thread to finish its token."""
        self.begin_close()
        if self.thread.is_alive():
            self.thread.join(wait)

    # --- the engine's thread ---

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closing and not self.waiting and not self.busy:
                    self.cond.wait()
                if self.closing:
                    for slot in self.slots:
                        if slot.job is not None:
                            slot.job.post("error", shutting_down())
                            slot.job = slot.seq = None
                    self.busy = 0
                    return
                for slot in self.slots:
                    if slot.job is None and self.waiting:
                        slot.job = self.waiting.popleft()
                        slot.seq = Sequence(slot.job.gen, self.tokenizer, self.window, self.end_id)
                        self.busy += 1
                running = [s for s in self.slots if s.job is not None]
            for slot in running:
                self._turn(slot)

    def _turn(self, slot: Slot) -> None:
        job, seq = slot.job, slot.seq
        assert job is not None and seq is not None
        if job.cancelled:
            self._free(slot, "cancelled")
            return
        try:
            text = seq.step(slot.model)
        except Exception as e:  # the engine's fault (out of memory, a bug): a 5xx, and the server goes on
            traceback.print_exc(file=sys.stderr)
            self._free(slot, None)
            job.post("error", server_error(f"generation failed: {e}"))
            return
        if job.cancelled:
            job.after_cancel += 1
        if text:
            job.post("text", text)
        if seq.finish is not None:
            self._free(slot, seq.finish)

    def _free(self, slot: Slot, finish: str | None) -> None:
        job, seq = slot.job, slot.seq
        assert job is not None and seq is not None
        with self.cond:
            slot.job = slot.seq = None
            self.busy -= 1
        if finish is not None:
            self._end(job, finish, len(job.gen.prompt), seq.count)

    def _end(self, job: Job, finish: str, prompt_tokens: int, completion_tokens: int) -> None:
        job.post("done", finish, prompt_tokens, completion_tokens)
        if self.log:
            extra = f", {job.after_cancel} token(s) after the client left" if finish == "cancelled" else ""
            print(f"lmcore serve: request {job.number} ({job.gen.kind}): {prompt_tokens} prompt + {completion_tokens} "
                  f"completion tokens, {finish} after {time.perf_counter() - job.start:.3f} s{extra}",
                  file=sys.stderr, flush=True)
