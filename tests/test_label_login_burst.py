"""A burst of logins must not hold up the pages of people already logged in (issue 18, point 6).

50 labelers logging in at once used to fill the request thread pool with handlers waiting for argon2 (and every core
with their hashes), so the next page of anyone already logged in queued behind them. Here the hashes are held on a
gate for as long as the test likes, so nothing depends on timing: while more logins than the request pool has threads
are hashing, an ordinary authenticated page and /healthz must answer, the hashes must run at most `workers` at once on
threads below normal CPU priority, and the per-account limit on checks in flight must hold. Then the gate opens and
every login succeeds."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from chatloom.label import auth, hashing
from chatloom.label.app import create_app

from .label_live import PW, LiveServer, csrf_of, login

pytest_plugins = ["tests.label_live"]  # the database fixtures: db_url, db, people, cheap hashing
K = 48  # more logins at once than the request thread pool has threads (anyio's default: 40)


class GatedHasher:
    """The cheap test hasher, except that `verify` waits for `gate`: those logins stay "hashing" until it opens."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.entered = self.running = self.max_running = 0
        self.nice: set[int] = set()

    def hash(self, password):
        return self.inner.hash(password)

    def verify(self, stored, password):
        with self.lock:
            self.entered += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            if sys.platform.startswith("linux"):
                self.nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        try:
            assert self.gate.wait(120), "the test never opened the gate"
            return self.inner.verify(stored, password)
        finally:
            with self.lock:
                self.running -= 1


class CountLogins:
    """ASGI wrapper that counts the POST /login requests that have reached the app."""

    def __init__(self, app):
        self.app, self.arrived, self.lock = app, 0, threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/login":
            with self.lock:
                self.arrived += 1
        await self.app(scope, receive, send)


def wait_until(cond, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_pages_answer_while_a_burst_of_logins_is_hashing(db, people, monkeypatch):
    with db.session() as s:
        for i in range(K):
            auth.add_user(s, f"burst{i:02d}", "labeler", PW)
    pool = hashing.HashPool(workers=2)
    monkeypatch.setattr(hashing, "pool", pool)
    app = CountLogins(create_app(db))
    with LiveServer(app) as base, ThreadPoolExecutor(K) as threads, ThreadPoolExecutor(4) as more:
        ada = login(httpx.Client(base_url=base, timeout=60), "ada", PW)  # logged in before the burst
        app.arrived = 0
        gated = GatedHasher(auth.hasher)
        monkeypatch.setattr(auth, "hasher", gated)
        clients = [httpx.Client(base_url=base, timeout=120) for _ in range(K)]
        forms = [csrf_of(c.get("/login").text) for c in clients]

        def log_in(i):
            field, token = forms[i]
            return clients[i].post("/login", data={"username": f"burst{i:02d}", "password": PW, field: token}).status_code

        burst = [threads.submit(log_in, i) for i in range(K)]
        try:
            assert wait_until(lambda: app.arrived == K and gated.entered >= 1), (app.arrived, gated.entered)
            # every login is in: queued for a hash or hashing, none done; the people already in still get pages
            page = ada.get("/tasks", timeout=30)
            assert page.status_code == 200 and "ada" in page.text
            assert ada.get("/healthz", timeout=30).status_code == 200
            assert not gated.gate.is_set() and not any(f.done() for f in burst)
            # the same account tried from unknown browsers while checks are in flight: at most `free` run at once
            lee = [httpx.Client(base_url=base, timeout=120) for _ in range(4)]
            lee_forms = [csrf_of(c.get("/login").text) for c in lee]
            lee_tries = [more.submit(lambda c=c, f=f: c.post("/login", data={"username": "lee", "password": PW,
                                                                                   f[0]: f[1]}).status_code)
                         for c, f in zip(lee, lee_forms)]
            assert wait_until(lambda: app.arrived == K + 4 and sum(f.done() for f in lee_tries) == 1)
            assert [f.result() for f in lee_tries if f.done()] == [429]
        finally:
            gated.gate.set()
        assert [f.result(timeout=120) for f in burst] == [303] * K
        assert sorted(f.result(timeout=120) for f in lee_tries) == [303, 303, 303, 429]
        assert 1 <= gated.max_running <= pool.workers  # bounded: the rest waited in the pool's queue, not in threads
        if sys.platform.startswith("linux"):  # hashing threads run below the server's own priority
            mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            assert min(gated.nice) == min(19, mine + hashing.NICE)
        for c in [ada, *clients, *lee]:
            c.close()
    pool.shutdown()


def test_limiter_counts_checks_in_flight_per_account():
    limiter = auth.LoginLimiter(attempts=100, window=60, free=3)
    assert [limiter.begin("ada", f"10.0.0.{i}") for i in range(4)] == [0, 0, 0, 1.0]  # a 4th at once: wait
    assert limiter.begin("bob", "10.0.0.9") == 0  # other accounts are not held up
    assert limiter.begin("ada", "10.0.0.9", known_device=True) == 0  # nor the owner's browser
    limiter.end("ada")
    assert limiter.begin("ada", "10.0.0.5") == 0  # one finished: room for one more
    for _ in range(3):
        limiter.end("ada")
    assert limiter.checking == {"bob": 1}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_hash_pool_threads_run_at_lower_priority_and_their_helpers_inherit_it():
    pool = hashing.HashPool(workers=1, nice=5)
    try:
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        def helper_priority():
            seen = []
            t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            t.start()
            t.join()
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), seen[0]

        assert pool.run(helper_priority) == (min(19, mine + 5), min(19, mine + 5))
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller is untouched
        assert pool.run(lambda: pool.run(lambda: 7)) == 7  # nested use on a pool of one does not deadlock
    finally:
        pool.shutdown()
