"""Load: 50 simulated labelers on loopback (one thread and one httpx client each, a fixed number of rounds, so the test
stops by itself) take and submit tasks concurrently against `chatloom label serve` (its own process) on a real SQLite file
(and PostgreSQL when CHATLOOM_TEST_PG is set). Every accepted submission must be in
the database exactly once, double submissions must be refused, no reply slot may be overbooked; p50/p95 latency is
printed (and written to the tmp dir as JSON)."""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from collections import Counter

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from chatloom.label import auth, service
from chatloom.label.db import Database
from chatloom.label.models import Message

from .conftest import require_pg
from .label_live import LabelServeProcess, csrf_of, http_client

LABELERS = 50
ROUNDS = 3
PW = "correct horse battery"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fifty_labelers_submit_concurrently_without_lost_or_duplicated_writes(tmp_path, monkeypatch, backend):
    monkeypatch.setattr(auth, "hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'label.db'}"
    else:
        from .label_live import fresh_pg
        url = fresh_pg(require_pg())
    db = Database(url)
    with db.session() as s:
        admin = auth.add_user(s, "admin", "admin", PW)
        for i in range(LABELERS):
            auth.add_user(s, f"l{i:02d}", "labeler", PW)
        pid = service.create_project(s, "load", creator=admin, replies_per_prompt=2).id

    latencies: dict[str, list[float]] = {"next": [], "submit": [], "login": []}
    accepted: list[tuple[str, str]] = []  # (kind, text) the server said it saved
    statuses: Counter = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(LABELERS)

    def timed(kind, fn):
        t = time.perf_counter()
        r = fn()
        with lock:
            latencies[kind].append(time.perf_counter() - t)
            statuses[r.status_code] += 1
        return r

    def labeler(i: int, base: str):
        name = f"l{i:02d}"
        try:
            with http_client(base) as c:
                field, token = csrf_of(c.get("/login").text)
                r = timed("login", lambda: c.post("/login", data={"username": name, "password": PW, field: token}))
                assert r.status_code == 303, r.text
                _, token = csrf_of(c.get("/tasks").text)
                start.wait(timeout=60)
                for rnd in range(ROUNDS):
                    for kind in ("prompt", "reply"):
                        r = timed("next", lambda k=kind: c.post(f"/projects/{pid}/next", data={"kind": k, field: token}))
                        location = r.headers.get("location", "")
                        if not re.fullmatch(r"/tasks/\d+", location):
                            assert r.status_code == 303 and "Nothing" in location, (r.status_code, location)
                            continue
                        body = f"{kind} by {name} in round {rnd}"
                        r = timed("submit", lambda u=location, b=body: c.post(u, data={"text": b, field: token}))
                        assert r.status_code == 303, (r.status_code, r.text[:300])
                        with lock:
                            accepted.append((kind, body))
                        if rnd == 0:  # a double click: the same task again must be refused, not saved twice
                            again = timed("submit", lambda u=location: c.post(u, data={"text": "again", field: token}))
                            assert again.status_code == 409, again.status_code
        except Exception as e:  # collected and asserted below, so one failure does not hang the others
            with lock:
                failures.append(f"{name}: {e!r}")

    t0 = time.perf_counter()
    with LabelServeProcess(url) as base:  # the users' cheap hashes carry their own argon2 parameters
        threads = [threading.Thread(target=labeler, args=(i, base), daemon=True) for i in range(LABELERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "labelers still running after 120 s"
    wall = time.perf_counter() - t0

    assert not failures, failures[:5]
    with db.session() as s:
        rows = list(s.execute(select(Message.role, Message.text, Message.parent_id)))
        per_parent = Counter(p for role, _, p in rows if role == "assistant")
        assert s.scalar(select(func.count()).select_from(Message).where(Message.text == "again")) == 0
    saved = Counter(text for _, text, _ in rows)
    assert sorted(saved) == sorted(text for _, text in accepted)  # nothing lost
    assert set(saved.values()) == {1}  # nothing duplicated
    assert max(per_parent.values()) <= 2  # no reply slot overbooked
    prompts = sum(kind == "prompt" for kind, _ in accepted)
    assert prompts == LABELERS * ROUNDS and statuses.get(500, 0) == 0

    def pct(values, q):
        return round(1000 * statistics.quantiles(values, n=100)[q - 1], 1)

    writes = latencies["next"] + latencies["submit"]
    report = {"backend": backend, "labelers": LABELERS, "rounds": ROUNDS, "requests": sum(statuses.values()), "wall_s": round(wall, 2),
              "messages_saved": len(rows), "prompts": prompts, "replies": len(rows) - prompts,
              "double_submits_refused": statuses[409],
              "write_p50_ms": pct(writes, 50), "write_p95_ms": pct(writes, 95),
              "submit_p50_ms": pct(latencies["submit"], 50), "submit_p95_ms": pct(latencies["submit"], 95),
              "next_p50_ms": pct(latencies["next"], 50), "next_p95_ms": pct(latencies["next"], 95),
              "status_counts": dict(statuses)}
    (tmp_path / "load.json").write_text(json.dumps(report, indent=1))
    print("\nlabel load:", json.dumps(report))
    if report["wall_s"] > 90:
        pytest.fail(f"load run took {report['wall_s']} s")
