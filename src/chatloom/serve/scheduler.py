"""The one decoding thread behind the server, with continuous batching: a request that arrives while others decode joins
the running batch at the next step (its prompt is prefilled, then it decodes with the others), and a row leaves the
batch the moment it finishes, so nobody waits for a whole batch. Requests are admitted first-come first-served, up to
`max_batch` rows at a time; the event loop never runs a model.

Each job carries an asyncio queue; the decoding thread hands it text deltas, finished completions and errors through
`loop.call_soon_threadsafe`, so HTTP handlers only ever await. A row that fails (its own parameters, its client's
callback, its prompt) ends with an ("error", i, message) event for its job only; its batch-mates decode on.
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

SHUTDOWN = "the server is shutting down"


@dataclass
class Job:
    """One HTTP request: `n` rows (choices) of the same conversation. Events: ("delta", i, text), ("done", i, Completion),
    ("error", i, message)."""

    requests: list[Request]
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def emit(self, *event):
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self):
        for r in self.requests:
            r.cancelled = True

    @property
    def cancelled(self) -> bool:
        return all(r.cancelled for r in self.requests)


class Scheduler:
    """Owns the decoding thread (started on the first `submit`). Counters for /health: `batches` (busy periods started
    from idle), `largest_batch` (most rows decoding together), `joined` (rows that joined a running batch),
    `cancelled` (rows ended early because their client went away), `failed` (rows that ended with an error)."""

    def __init__(self, engine: Engine, max_batch: int = 8, max_queue: int = 256, gather_seconds: float = 0.0,
                 continuous: bool = True):
        self.engine = engine
        self.continuous = continuous  # False: admit only when idle, a batch at a time (for comparison in benchmarks)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.gather_seconds = gather_seconds  # when idle, wait this long after a first request for others to join it
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.carry: collections.deque[Job] = collections.deque()  # taken from the queue, waiting for room
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.running = 0
        self.stopping = threading.Event()
        self.batches = self.largest_batch = self.joined = self.cancelled = self.failed = 0

    @property
    def waiting(self) -> int:
        return self.queue.qsize() + len(self.carry)

    def make_job(self, conv: Conversation, params: list[SamplingParams], loop: asyncio.AbstractEventLoop) -> Job:
        """Tokenize and fit the prompt (may raise ContextWindowError); call it off the event loop that `loop` runs."""
        job = Job([], loop, asyncio.Queue())
        fitted = self.engine.fit_prompt(conv, max(p.max_tokens for p in params))
        for i, p in enumerate(params):
            job.requests.append(self.engine.request(conv, p, fitted=fitted,
                                                    on_delta=lambda text, i=i: job.emit("delta", i, text),
                                                    on_finish=lambda c, i=i: job.emit("done", i, c),
                                                    on_error=lambda message, i=i: job.emit("error", i, message)))
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
        """End the decoding thread at its next step; rows still decoding or waiting get an error event."""
        self.stopping.set()
        self.queue.put(None)  # wakes a thread waiting for work
        if self.thread is not None:
            self.thread.join(timeout=10)

    # ------------------------------------------------------------------------------------------ the decoding thread
    def _work(self) -> None:
        batch = self.engine.batch()
        while True:
            idle = not batch.rows
            jobs, stopping = self._admit(self.max_batch - len(batch.rows), wait=idle,
                                         can_join=self.continuous and batch.can_join)
            stopping = stopping or self.stopping.is_set()
            requests = [r for j in jobs for r in j.requests]
            try:
                if requests:
                    if idle:
                        self.batches += 1
                    else:
                        self.joined += len(requests)
                    batch.add(requests)
                    self.failed += sum(r.error is not None for r in requests)
                self.running = len(batch.rows)
                self.largest_batch = max(self.largest_batch, self.running)
                if stopping:
                    self._shut_down(batch)
                    return
                if batch.rows:
                    ended = batch.step()
                    self.cancelled += sum(r.cancelled and r.error is None for r in ended)
                    self.failed += sum(r.error is not None for r in ended)
                    self.running = len(batch.rows)
            except Exception as e:  # a bug in the batch itself: end its rows, keep the thread serving
                for row in batch.rows:
                    row.fail(e)
                self.failed += len(batch.rows)
                batch = self.engine.batch()
                self.running = 0

    def _admit(self, room: int, wait: bool, can_join: bool) -> tuple[list[Job], bool]:
        """Jobs that fit in `room` rows, first come first served (the head of the line is never skipped); when `wait`
        (nothing is decoding), block until one arrives. Returns (jobs, whether the server is stopping)."""
        jobs: list[Job] = []
        if not wait and not can_join:
            return jobs, False
        while True:
            job = self._take(block=wait and not jobs)
            if job is False:
                if wait and not jobs:
                    continue
                return jobs, False
            if job is None:
                return jobs, True
            if job.cancelled:  # its client left while it waited: never decoded
                self.cancelled += len(job.requests)
                continue
            rows = len(job.requests)
            if rows > room and (jobs or not wait):  # an over-wide job still runs alone on an idle engine
                self.carry.appendleft(job)
                return jobs, False
            jobs.append(job)
            room -= rows
            if wait and len(jobs) == 1 and self.gather_seconds:
                time.sleep(self.gather_seconds)
            wait = False

    def _take(self, block: bool) -> Job | None | bool:
        if self.carry:
            return self.carry.popleft()
        try:
            return self.queue.get(timeout=0.5) if block else self.queue.get_nowait()
        except queue.Empty:
            return False

    def _shut_down(self, batch) -> None:
        """Every row still decoding or waiting ends with an error event (its client is told, not left hanging)."""
        for row in batch.rows:
            row.request.cancelled = True
            row.fail(RuntimeError(SHUTDOWN))
        pending = []
        while True:  # the carried-over job first, then the queue
            job = self._take(block=False)
            if job is False:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            for i, _ in enumerate(job.requests):
                try:
                    job.emit("error", i, SHUTDOWN)
                except RuntimeError:  # its event loop is already closed: nobody is listening
                    pass


__all__ = ["Completion", "Job", "Scheduler"]
