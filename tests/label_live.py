"""Helpers for the labeling-app tests: database fixtures (SQLite file, PostgreSQL when CHATLOOM_TEST_PG is set), a
uvicorn server on a loopback port in a thread, cheap password hashing, CSRF scraping, and logged-in httpx clients.
Test modules import the fixtures they use from here."""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from sqlalchemy import select, text

from chatloom.label import auth
from chatloom.label.db import Database, migrate
from chatloom.label.pgscratch import fresh_pg  # noqa: F401  (test modules import it from here)

PW = "correct horse battery"
BACKENDS = ["sqlite", "postgresql"]  # PostgreSQL cases are always collected; conftest.require_pg skips/fails them
PEOPLE = [("ada", "admin"), ("lee", "labeler"), ("max", "labeler"), ("kim", "labeler"), ("rev", "reviewer")]


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch):
    monkeypatch.setattr(auth, "hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'label.db'}"
    from .conftest import require_pg

    return fresh_pg(require_pg())


@pytest.fixture
def db(db_url):
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def people(db):
    with db.session() as s:
        ids = {name: auth.add_user(s, name, role, PW).id for name, role in PEOPLE}
    return ids


def user(s, name):
    from chatloom.label.models import User
    return s.scalar(select(User).where(User.name == name))

CSRF_RE = re.compile(r'name="(csrf[^"]*)" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`with LiveServer(app) as url:` serves `app` on 127.0.0.1 until the block ends."""

    def __init__(self, app, port: int | None = None):
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    limit_concurrency=500, backlog=512, proxy_headers=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def csrf_of(html: str) -> tuple[str, str]:
    m = CSRF_RE.search(html)
    assert m, "page has no CSRF field"
    return m.group(1), m.group(2)


def login(client, name: str, password: str):
    page = client.get("/login")
    field, token = csrf_of(page.text)
    r = client.post("/login", data={"username": name, "password": password, field: token})
    assert r.status_code == 303, (r.status_code, r.text[:300])
    return client


def post_form(client, get_url: str, post_url: str, data: dict):
    """GET a page for its CSRF token, then POST the form with it."""
    page = client.get(get_url)
    field, token = csrf_of(page.text)
    return client.post(post_url, data={**data, field: token})


def http_client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, follow_redirects=False, timeout=60)


class LabelServeProcess:
    """`chatloom label serve --db URL` in its own process (its own interpreter lock, like a real deployment)."""

    def __init__(self, db_url: str):
        import subprocess
        import sys
        from pathlib import Path

        self.port = free_port()
        src = str(Path(__file__).resolve().parents[1] / "src")
        self.proc = subprocess.Popen([sys.executable, "-m", "chatloom.cli", "label", "serve", "--db", db_url, "--host",
                                      "127.0.0.1", "--port", str(self.port)], env={**os.environ, "PYTHONPATH": src},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                    return self.base_url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("label serve did not come up in 60 s")
            time.sleep(0.1)

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


def database_at(db_url: str, revision: str, roles: tuple[str, ...]) -> Database:
    """A database migrated only to `revision`, holding PEOPLE, project 1 ('old'), its instructions and tree 1 with
    messages 1 (the user's prompt) and 2.. (replies to it, one per entry of `roles` after the first), written with
    that revision's SQL: the state a migration after it must carry forward."""
    database = Database(db_url, run_migrations=False)
    migrate(database.engine, revision)
    with database.session() as s:
        for name, role in PEOPLE:
            auth.add_user(s, name, role, PW)
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO projects (id, name, protocol, replies_per_prompt, reviews_per_message, "
                          "rankings_per_prompt, max_depth, created_at) VALUES (1, 'old', 'chatml', 2, 1, 1, 3, "
                          "'2026-01-01')"))
        conn.execute(text("INSERT INTO instructions (project_id, version, markdown, created_at) "
                          "VALUES (1, 1, 'x', '2026-01-01')"))
        conn.execute(text("INSERT INTO trees (id, project_id, created_at, deleted) VALUES (1, 1, '2026-01-01', false)"))
        for mid, role in enumerate(roles, start=1):
            parent = None if mid == 1 else 1
            conn.execute(text("INSERT INTO messages (id, tree_id, parent_id, role, text, depth, author_label, created_at,"
                              " updated_at, time_spent_s, deleted, version) VALUES (:id, 1, :p, :r, :t, :d, 'import', "
                              "'2026-01-01', '2026-01-01', 0, false, 1)"),
                         {"id": mid, "p": parent, "r": role, "t": f"m{mid}", "d": 0 if parent is None else 1})
    return database
