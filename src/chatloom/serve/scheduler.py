"""The one decoding thread behind the server: requests queue first-come first-served and whatever is waiting when the
engine becomes free (plus what arrives within `gather_seconds` of the first) is decoded together as one batch, up to
`max_batch` rows, so the event loop never runs a model.

Each job carries an asyncio queue; the decoding thread hands it text deltas and finished completions through
`loop.call_soon_threadsafe`, so HTTP handlers only ever await.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from dataclasses import dataclass, field

from ..conversation import Conversation
from ..engine import Completion, Engine, Request, SamplingParams


@dataclass
class Job:
    """One HTTP request: `n` rows (choices) of the same conversation. Events: ("delta", i, text), ("done", i, Completion),
    ("error", -1, message)."""

    requests: list[Request]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    remaining: int = 0

    def emit(self, *event):
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self):
        for r in self.requests:
            r.cancelled = True

    @property
    def cancelled(self) -> bool:
        return all(r.cancelled for r in self.requests)


class Scheduler:
    def __init__(self, engine: Engine, max_batch: int = 8, max_queue: int = 256, gather_seconds: float = 0.02):
        self.engine = engine
        self.gather_seconds = gather_seconds  # after the first request, wait this long for others to join its batch
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.carry: collections.deque[Job] = collections.deque()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.batches = 0
        self.largest_batch = 0
        self.cancelled = 0  # rows ended early because their client went away

    @property
    def waiting(self) -> int:
        return self.queue.qsize() + len(self.carry)

    def make_job(self, conv: Conversation, params: list[SamplingParams], loop: asyncio.AbstractEventLoop) -> Job:
        """Tokenize and fit the prompt (may raise ContextWindowError); call it off the event loop that `loop` runs."""
        job = Job([], loop, asyncio.Queue())
        prompt, dropped = self.engine.fit_prompt(conv, max(p.max_tokens for p in params))
        for i, p in enumerate(params):
            job.requests.append(Request(list(prompt), p, dropped_messages=dropped,
                                        max_new=min(p.max_tokens, self.engine.max_context - len(prompt)),
                                        on_delta=lambda text, i=i: job.emit("delta", i, text),
                                        on_finish=lambda c, i=i: job.emit("done", i, c)))
        job.remaining = len(params)
        return job

    def submit(self, job: Job) -> None:
        if self.waiting >= self.max_queue:
            raise OverflowError(f"the server is busy ({self.waiting} requests waiting); retry later")
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._work, name="chatloom-decoder", daemon=True)
                self.thread.start()
        self.queue.put(job)

    def stop(self) -> None:
        self.queue.put(None)
        if self.thread is not None:
            self.thread.join(timeout=10)

    def _next(self, block: bool) -> Job | None | bool:
        if self.carry:
            return self.carry.popleft()
        try:
            return self.queue.get(timeout=0.5) if block else self.queue.get_nowait()
        except queue.Empty:
            return False

    def _work(self) -> None:
        while True:
            first = self._next(block=True)
            if first is False:
                continue
            if first is None:
                return
            jobs, rows = [first], len(first.requests)
            if rows < self.max_batch and self.gather_seconds:
                time.sleep(self.gather_seconds)
            while rows < self.max_batch:
                job = self._next(block=False)
                if job is False:
                    break
                if job is None:
                    self.queue.put(None)
                    break
                if rows + len(job.requests) > self.max_batch:
                    self.carry.appendleft(job)  # first in line for the next batch
                    break
                jobs.append(job)
                rows += len(job.requests)
            gone = [j for j in jobs if j.cancelled]  # clients that left while waiting: never decoded
            self.cancelled += sum(len(j.requests) for j in gone)
            jobs = [j for j in jobs if not j.cancelled]
            requests = [r for j in jobs for r in j.requests]
            if not requests:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(requests))
            try:
                for _ in self.engine.run(requests):
                    pass
            except Exception as e:  # a failed batch fails its requests, never the server
                for j in jobs:
                    j.emit("error", -1, f"{type(e).__name__}: {e}")
            self.cancelled += sum(r.cancelled for r in requests)


__all__ = ["Completion", "Job", "Scheduler"]
