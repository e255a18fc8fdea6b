"""Helpers for the labeling-app tests: a uvicorn server on a loopback port in a thread, cheap password hashing,
CSRF scraping, and logged-in httpx clients."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import uvicorn

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
                                                    limit_concurrency=500, backlog=512))
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
        import os
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
