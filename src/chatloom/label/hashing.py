"""Where password hashes run: one small executor of their own, below ordinary requests' CPU priority.

argon2id costs about 0.2 s of CPU and 64 MiB per hash by design (the library's defaults, not weakened here), and its 4
lanes run in 4 threads. When 50 labelers log in at once, hashing in the request thread pool took every core and most
of the pool's threads: the first page of those already logged in waited behind the others' hashes (p95 1.25 s). So:

- hashes run in `HashPool`, at most `workers` at once (default: one per core but one, at least 1, at most 4): the
  queue of a login burst waits there, holding no request thread (a login awaits its hash, see `routes.login`);
- its threads lower their own CPU priority (Linux: nice +`NICE` per thread; argon2's lane threads inherit it), so a
  page request that needs a core gets it first and a hash uses what is left over. Logins alone still use every core.

`auth.hash_password` / `auth.verify_password` (synchronous, e.g. `label user add`) wait on the same pool.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
NICE = 10  # nice +10: CPU weight 110 against a request thread's 1024 (Linux CFS), yet not starved by other nice-0 jobs


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return max(1, min(4, cores() - 1))


def lower_own_priority(nice: int = NICE) -> None:
    """Lower the calling thread's CPU priority (Linux: the nice value is per thread and inherited by the threads it
    starts). Elsewhere `setpriority` would renice the whole process, so it is left alone there."""
    if not sys.platform.startswith("linux") or nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


class HashPool:
    """A bounded executor for password hashing whose threads run below normal priority. Created lazily (safe to import
    before a fork); `submit` for threads, `run` to wait from synchronous code, `await pool.call(...)` from the loop."""

    def __init__(self, workers: int | None = None, nice: int = NICE):
        self.workers = workers or default_workers()
        self.nice = nice
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="chatloom-hash",
                                                    initializer=lower_own_priority, initargs=(self.nice,))
            return self._executor

    def submit(self, fn: Callable[..., T], *args) -> Future[T]:
        return self._get().submit(fn, *args)

    def run(self, fn: Callable[..., T], *args) -> T:
        if threading.current_thread().name.startswith("chatloom-hash"):
            return fn(*args)  # already on a hashing thread: waiting for another would deadlock a pool of one
        return self.submit(fn, *args).result()

    async def call(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def shutdown(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


pool = HashPool()
