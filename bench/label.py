"""Labeling app under N concurrent labelers: `chatloom label serve` (its own process) on loopback, driven by N
asyncio clients doing the real mix per round — take a prompt task, open it, preview the tokens, submit; take a reply
task, open it, preview twice while "typing", submit; take a review, submit; take a ranking if there is one, submit —
bounded by --rounds and --max-seconds, back to back or with --think seconds between requests. Prints JSON: p50/p95/p99 latency per route for each backend (login reported
separately: argon2id costs what it costs), then checks the database: every accepted submission saved exactly once, no
duplicate reviews or rankings per person, no reply slot overbooked. Also the server's CPU time per request, the
number that does not move when other jobs share the machine.

Run: python bench/label.py [--labelers 50] [--rounds 3] [--backends sqlite,postgresql [--pg postgresql://...]]
(without --pg, PostgreSQL is a throwaway cluster started for the run).
The machine may be shared with other jobs: absolute numbers are noisy; compare runs made back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CSRF_RE = re.compile(r'name="(csrf[^"]*)" value="([^"]+)"')
RANK_RE = re.compile(r'name="rank_(\d+)"')
PW = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(url: str, labelers: int, cheap_login: bool) -> int:
    from argon2 import PasswordHasher

    from chatloom.label import auth, service
    from chatloom.label.db import Database

    if cheap_login:
        auth.hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    db = Database(url)
    with db.session() as s:
        admin = auth.add_user(s, "admin", "admin", PW)
        for i in range(labelers):
            auth.add_user(s, f"l{i:03d}", "labeler" if i % 5 else "reviewer", PW)
        pid = service.create_project(s, "bench", creator=admin, replies_per_prompt=2, reviews_per_message=2).id
    db.dispose()
    return pid


class Server:
    def __init__(self, url: str):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen([sys.executable, "-m", "chatloom.cli", "label", "serve", "--db", url, "--host",
                                      "127.0.0.1", "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode()[-2000:])
            try:
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return self.base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("label serve did not come up")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux /proc): per request, it is the number
        that stays put when other jobs slow the machine down."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def labeler(i: int, base: str, pid: int, rounds: int, stop_at: float, times: dict, statuses: Counter,
                  accepted: list, start: asyncio.Event, think: float = 0.0):
    import random

    name = f"l{i:03d}"
    reviewer = i % 5 == 0
    rng = random.Random(i)

    async with httpx.AsyncClient(base_url=base, timeout=120, follow_redirects=False) as c:
        async def timed(route, method, url, **kw):
            if think and start.is_set():  # a person reads and types between two requests
                await asyncio.sleep(rng.expovariate(1 / think))
            t = time.perf_counter()
            r = await c.request(method, url, **kw)
            times[route].append(time.perf_counter() - t)
            statuses[(route, r.status_code)] += 1
            if r.status_code >= 500:
                raise RuntimeError(f"{route}: {r.status_code}")
            return r

        field, token = CSRF_RE.search((await c.get("/login")).text).groups()
        r = await timed("login", "POST", "/login", data={"username": name, "password": PW, field: token})
        assert r.status_code == 303, r.text[:200]
        token = CSRF_RE.search((await timed("tasks_page", "GET", "/tasks")).text).group(2)
        await start.wait()
        for rnd in range(rounds):
            kinds = ("rank", "review") if reviewer else ("prompt", "reply", "review", "rank")
            for kind in kinds:
                if time.monotonic() > stop_at:
                    return
                r = await timed("next", "POST", f"/projects/{pid}/next", data={"kind": kind, field: token})
                where = r.headers.get("location", "")
                if not re.fullmatch(r"/tasks/\d+", where):
                    continue
                task_id = int(where.rsplit("/", 1)[1])
                page = (await timed("task_page", "GET", where)).text
                if kind in ("prompt", "reply"):
                    text = f"{kind} by {name} in round {rnd}: " + "some words to tokenize " * 8
                    for cut in ((len(text) // 2, len(text)) if kind == "reply" else (len(text),)):
                        await timed("preview", "POST", "/api/preview", json={"task_id": task_id, "text": text[:cut]},
                                    headers={"X-CSRF-Token": token})
                    r = await timed("submit_text", "POST", where, data={"text": text, field: token})
                    if r.status_code == 303:
                        accepted.append(("text", text))
                elif kind == "review":
                    r = await timed("submit_review", "POST", where, data={"quality": str(1 + i % 5), "helpful": "on",
                                                                           field: token})
                    if r.status_code == 303:
                        accepted.append(("review", name))
                else:
                    ids = RANK_RE.findall(page)
                    data = {f"rank_{m}": str(pos) for pos, m in enumerate(ids, 1)}
                    r = await timed("submit_rank", "POST", where, data={**data, field: token})
                    if r.status_code == 303:
                        accepted.append(("rank", name))


def pct(values: list[float], q: int) -> float | None:
    if len(values) < 2:
        return round(1000 * values[0], 1) if values else None
    return round(1000 * statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def check_database(url: str, accepted: list) -> dict:
    from sqlalchemy import func, select

    from chatloom.label.db import Database
    from chatloom.label.models import Message, Ranking, Review

    db = Database(url, run_migrations=False)
    with db.session() as s:
        texts = Counter(t for (t,) in s.execute(select(Message.text)))
        per_parent = Counter(p for p, role in s.execute(select(Message.parent_id, Message.role)) if role == "assistant")
        reviews = list(s.execute(select(Review.message_id, Review.reviewer_id)))
        rankings = list(s.execute(select(Ranking.parent_id, Ranking.ranker_id)))
        n_reviews = s.scalar(select(func.count()).select_from(Review))
        n_rankings = s.scalar(select(func.count()).select_from(Ranking))
    db.dispose()
    wanted = Counter(t for kind, t in accepted if kind == "text")
    return {"texts_lost": sum((wanted - texts).values()), "texts_duplicated": sum(n - 1 for n in texts.values() if n > 1),
            "reviews_saved": n_reviews, "reviews_accepted": sum(k == "review" for k, _ in accepted),
            "rankings_saved": n_rankings, "rankings_accepted": sum(k == "rank" for k, _ in accepted),
            "duplicate_reviews": len(reviews) - len(set(reviews)), "duplicate_rankings": len(rankings) - len(set(rankings)),
            "max_replies_per_prompt": max(per_parent.values(), default=0)}


async def drive(base: str, pid: int, labelers: int, rounds: int, max_seconds: float, think: float):
    times: dict[str, list[float]] = defaultdict(list)
    statuses: Counter = Counter()
    accepted: list = []
    start = asyncio.Event()
    stop_at = time.monotonic() + max_seconds
    tasks = [asyncio.create_task(labeler(i, base, pid, rounds, stop_at, times, statuses, accepted, start, think))
             for i in range(labelers)]
    while len(times["tasks_page"]) < labelers and not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - t0
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return times, statuses, accepted, wall, errors


def run(backend: str, url: str, args) -> dict:
    pid = prepare(url, args.labelers, args.cheap_login)
    server = Server(url)
    with server as base:
        cpu0 = server.cpu_seconds()
        times, statuses, accepted, wall, errors = asyncio.run(drive(base, pid, args.labelers, args.rounds,
                                                                    args.max_seconds, args.think))
        cpu = server.cpu_seconds() - cpu0
    writes = [x for r in ("next", "submit_text", "submit_review", "submit_rank") for x in times[r]]
    routes = {r: {"n": len(v), "p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "p99_ms": pct(v, 99)}
              for r, v in sorted(times.items())}
    routes["all_writes"] = {"n": len(writes), "p50_ms": pct(writes, 50), "p95_ms": pct(writes, 95),
                            "p99_ms": pct(writes, 99)}
    requests = sum(len(v) for k, v in times.items() if k != "login")
    return {"backend": backend, "labelers": args.labelers, "rounds": args.rounds, "think_s": args.think,
            "wall_s": round(wall, 2), "requests_after_login": requests,
            "requests_per_s": round(requests / wall, 1) if wall else None,
            "server_cpu_ms_per_request": round(1000 * cpu / max(1, requests + len(times["login"])), 2),
            "routes": routes, "statuses": {f"{r} {c}": n for (r, c), n in sorted(statuses.items())},
            "errors": errors[:5], "database": check_database(url, accepted)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--think", type=float, default=0.0, help="mean seconds a labeler spends between two requests "
                    "(exponential); 0 = back to back, the server saturated")
    ap.add_argument("--backends", default="sqlite")
    ap.add_argument("--pg", default=os.environ.get("CHATLOOM_TEST_PG"), help="PostgreSQL URL (its public schema is "
                    "reset); without it, a throwaway cluster is started (/usr/lib/postgresql/*/bin)")
    ap.add_argument("--cheap-login", action="store_true", help="cheap argon2 parameters (login timings meaningless)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from chatloom.label import pgscratch

    results = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            tmp = tempfile.mkdtemp(prefix="label-bench-")
            url = f"sqlite:///{tmp}/label.db"
        elif backend == "postgresql":
            if not args.pg:  # a throwaway cluster of our own for this run
                with pgscratch.throwaway_cluster() as url:
                    results.append(run(backend, url, args))
                print(json.dumps(results[-1]), flush=True)
                continue
            url = pgscratch.fresh_pg(args.pg)
        else:
            sys.exit(f"unknown backend {backend}")
        results.append(run(backend, url, args))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
