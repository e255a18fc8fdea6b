"""Labeling app under attack: operator draft keys go only to the endpoint they were configured for (checked by a
listener of our own on loopback that records every Authorization header), bad ids and bodies are 4xx on the app's
error page, project settings are checked when saved (tokenizers only from the operator's folders, and they must load),
and the login limiter slows guessing per account without locking the owner out and ignores forged X-Forwarded-For."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from chatloom.label import auth, service
from chatloom.label.app import create_app
from chatloom.label.cli import server_config
from chatloom.label.drafts import Endpoints
from chatloom.label.models import Project

from .label_live import PW, csrf_of, free_port, login, post_form, user

pytest_plugins = ["tests.label_live"]  # the database fixtures: db_url, db, people, cheap hashing
SECRET = "sk-operator-0123456789abcdef-DO-NOT-LEAK"
LEGACY_SECRET = "sk-legacy-env-key-DO-NOT-LEAK"
HUGE = "99999999999999999999"


class Recorder:
    """An OpenAI-compatible endpoint of our own on loopback that records the Authorization header of every request."""

    def __init__(self, model: str):
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: dict):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                outer.seen.append((self.path, self.headers.get("authorization")))
                self._answer({"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                          "owned_by": "me"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.seen.append((self.path, self.headers.get("authorization")))
                self._answer({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": f"a draft from {model}"}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def reply_task(db, app, name, pid):
    """Log `name` in, take a reply task in project `pid`; (client, task id, CSRF token)."""
    client = login(TestClient(app, follow_redirects=False), name, PW)
    r = post_form(client, "/tasks", f"/projects/{pid}/next", {"kind": "reply"})
    assert r.status_code == 303 and r.headers["location"].startswith("/tasks/"), r.headers
    task_url = r.headers["location"]
    return client, int(task_url.rsplit("/", 1)[1]), csrf_of(client.get(task_url).text)[1]


def test_operator_keys_go_only_to_their_endpoint(db, db_url, people):
    with Recorder("operator-model") as operator, Recorder("attacker-model") as attacker:
        endpoints = Endpoints.configure([f"ops={operator.url}"], [], environ={
            "CHATLOOM_LABEL_DRAFT_KEY_OPS": SECRET,  # the named endpoint's key, from the environment
            "CHATLOOM_LABEL_DRAFT_BASE_URL": operator.url, "CHATLOOM_LABEL_DRAFT_API_KEY": LEGACY_SECRET})
        app = create_app(db, draft_endpoints=endpoints)
        ada = login(TestClient(app, follow_redirects=False), "ada", PW)
        r = post_form(ada, "/admin", "/admin/projects", {"name": "named", "draft_endpoint": "ops"})
        assert r.status_code == 303, r.text
        named = int(r.headers["location"].rsplit("/", 1)[1])
        r = post_form(ada, "/admin", "/admin/projects", {"name": "typed"})
        typed = int(r.headers["location"].rsplit("/", 1)[1])
        # the admin points a project at a listener of their own: accepted, but it will never see a key
        r = post_form(ada, f"/admin/projects/{typed}", f"/admin/projects/{typed}/settings",
                      {"draft_endpoint": "", "draft_base_url": attacker.url})
        assert r.status_code == 303, r.text
        r = post_form(ada, f"/admin/projects/{typed}", f"/admin/projects/{typed}/settings", {"draft_endpoint": "nope"})
        assert r.status_code == 400 and "no draft endpoint named" in r.text
        r = post_form(ada, f"/admin/projects/{typed}", f"/admin/projects/{typed}/settings",
                      {"draft_endpoint": "ops", "draft_base_url": attacker.url})
        assert r.status_code == 400 and "not both" in r.text
        for pid in (named, typed):
            for i, name in enumerate(("lee", "max")):
                with db.session() as s:
                    u = user(s, name)
                    task = service.next_task(s, service.get_project(s, pid), u, "prompt")
                    service.submit_text(s, task, u, f"question {i} in {pid}")
        for pid, expect in ((named, "operator-model"), (typed, "attacker-model")):
            client, task_id, token = reply_task(db, app, "kim", pid)
            r = client.post(f"/api/tasks/{task_id}/draft", json={}, headers={"X-CSRF-Token": token})
            assert r.status_code == 200 and r.json()["text"] == f"a draft from {expect}", r.text
        assert operator.seen and all(auth_ == f"Bearer {SECRET}" for _, auth_ in operator.seen)
        assert attacker.seen and all(SECRET not in (a or "") and LEGACY_SECRET not in (a or "")
                                     for _, a in attacker.seen), attacker.seen
        # never shown back, never exported, never in the database
        pages = [ada.get(u).text for u in ("/admin", f"/admin/projects/{named}", f"/admin/projects/{typed}")]
        assert all(SECRET not in p and LEGACY_SECRET not in p for p in pages)
        assert "with key" in pages[1]  # the admin learns that there is a key, not what it is
        exported = ada.get(f"/admin/projects/{named}/export?threads=all")
        assert SECRET not in exported.text and LEGACY_SECRET not in exported.text
        with db.session() as s:
            assert s.get(Project, named).draft_endpoint == "ops"
    if db_url.startswith("sqlite:///"):
        dbfile = Path(db_url.removeprefix("sqlite:///"))
        db.dispose()
        raw = b"".join(p.read_bytes() for p in dbfile.parent.glob(dbfile.name + "*"))
        assert SECRET.encode() not in raw and LEGACY_SECRET.encode() not in raw and b"operator-model" in raw


ROUTES_WITH_IDS = [("GET", "/tasks/{}"), ("POST", "/tasks/{}"), ("POST", "/tasks/{}/skip"), ("GET", "/messages/{}"),
                   ("GET", "/messages/{}/edit"), ("POST", "/messages/{}/edit"), ("POST", "/messages/{}/review"),
                   ("GET", "/messages/{}/review"), ("GET", "/projects/{}/instructions"), ("POST", "/projects/{}/next"),
                   ("GET", "/admin/projects/{}"), ("POST", "/admin/projects/{}/settings"),
                   ("POST", "/admin/projects/{}/instructions"), ("GET", "/admin/projects/{}/export"),
                   ("POST", "/admin/messages/{}/withdraw"), ("POST", "/api/tasks/{}/draft")]


def test_ids_past_the_integer_range_and_bad_bodies_are_4xx(db, people):
    app = create_app(db)
    ada = login(TestClient(app, follow_redirects=False), "ada", PW)
    token = csrf_of(ada.get("/admin").text)[1]
    for method, route in ROUTES_WITH_IDS:
        for bad in (HUGE, "0", "-5", "abc", "1.5"):
            r = ada.request(method, route.format(bad), data={"csrf_token": token, "version": "1", "text": "x"},
                            headers={"X-CSRF-Token": token})
            assert r.status_code == 404, (method, route, bad, r.status_code, r.text[:200])
            if route.startswith("/api/"):
                assert "error" in r.json()
            else:
                assert 'id="error-message"' in r.text
    new_project_id = int(post_form(ada, "/admin", "/admin/projects", {"name": "p"}).headers["location"].rsplit("/")[-1])
    task = post_form(ada, "/tasks", f"/projects/{new_project_id}/next", {"kind": "prompt"}).headers["location"]
    for body in ({"task_id": None}, {"task_id": "abc"}, {"task_id": int(HUGE)}, {"task_id": 1, "text": 5},
                 {"task_id": 1, "text": ["x"]}, [1, 2], "text", {"task_id": -1}, {"task_id": True}):
        r = ada.post("/api/preview", json=body, headers={"X-CSRF-Token": token})
        assert r.status_code == 400 and "error" in r.json(), (body, r.status_code, r.text)
    r = ada.post("/api/preview", content=b"{not json", headers={"X-CSRF-Token": token,
                                                               "content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "the body must be JSON"}
    for form in ({"quality": "abc"}, {"text": ""}, {"version": HUGE}):
        r = ada.post(task, data={"csrf_token": token, **form})
        assert 400 <= r.status_code < 500, (form, r.status_code)
    assert ada.get("/no/such/page").status_code == 404 and 'id="error-message"' in ada.get("/no/such/page").text
    assert ada.delete("/tasks").status_code in (403, 405)


def test_tokenizer_settings_are_checked_when_saved(db, people, tmp_path, bundled_tokenizer_path):
    allowed = tmp_path / "tokenizers"
    shutil.copytree(bundled_tokenizer_path, allowed / "bpe")
    (allowed / "broken").mkdir()
    (allowed / "broken" / "tokenizer.json").write_text("{not a tokenizer", encoding="utf-8")
    app = create_app(db, tokenizer_dirs=[allowed])
    ada = login(TestClient(app, follow_redirects=False), "ada", PW)
    pid = int(post_form(ada, "/admin", "/admin/projects", {"name": "p"}).headers["location"].rsplit("/")[-1])
    url = f"/admin/projects/{pid}"
    outside = {}
    for path in ("/etc/passwd", "/etc/no-such-file", "../../../etc/passwd", str(bundled_tokenizer_path), "/"):
        r = post_form(ada, url, url + "/settings", {"tokenizer_path": path})
        assert r.status_code == 400 and 'id="settings-error"' in r.text, (path, r.status_code)
        outside[path] = r.text.split('id="settings-error">', 1)[1].split("<", 1)[0]
        assert "root:" not in r.text
    assert len(set(outside.values())) == 1  # the same answer whether the file exists or not: nothing to probe
    r = post_form(ada, url, url + "/settings", {"tokenizer_path": "broken"})
    assert r.status_code == 400 and "does not load" in r.text
    r = post_form(ada, url, url + "/settings", {"tokenizer_path": "bpe"})
    assert r.status_code == 303, r.text
    with db.session() as s:
        assert s.get(Project, pid).tokenizer_path == str((allowed / "bpe").resolve())
    r = post_form(ada, "/admin", "/admin/projects", {"name": "q", "tokenizer_path": "/etc/passwd"})
    assert r.status_code == 400
    with db.session() as s:  # a project stored before the check (or whose file changed) answers 409, not 500
        s.get(Project, pid).tokenizer_path = "/etc/passwd"
    lee = login(TestClient(app, follow_redirects=False), "lee", PW)
    task = post_form(lee, "/tasks", f"/projects/{pid}/next", {"kind": "prompt"}).headers["location"]
    token = csrf_of(lee.get(task).text)[1]
    r = lee.post("/api/preview", json={"task_id": int(task.rsplit("/")[-1]), "text": "hi"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 409 and "cannot be loaded" in r.json()["error"] and "root:" not in r.text


def test_limiter_delays_grow_per_account_are_bounded_and_spare_known_devices():
    now = [1000.0]
    limiter = auth.LoginLimiter(attempts=5, window=60, free=3, base=1.0, cap=8.0, forget=900, clock=lambda: now[0])
    waits = []
    for i in range(8):  # a distributed guesser: a new address every time
        address = f"10.0.0.{i}"
        waits.append(limiter.wait("ada", address))
        limiter.failed("ada", address)
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8]  # 3 free failures, then 1 s, 2 s, 4 s ... capped at 8 s
    assert [limiter.account_delay(n) for n in range(3, 10)] == [1, 2, 4, 8, 8, 8, 8]
    assert limiter.wait("ada", "10.9.9.9") == 8.0  # never more than the cap: a delay, not a lockout
    assert limiter.wait("ada", "10.9.9.9", known_device=True) == 0  # the owner's browser is not held up
    assert limiter.wait("bob", "10.9.9.9") == 0  # other accounts are not affected
    now[0] += 8.0
    assert limiter.wait("ada", "10.0.0.99") == 0
    now[0] += 1000
    limiter.failed("ada", "10.0.0.1")
    assert limiter.wait("ada", "10.0.0.2") == 0  # forgotten after 15 quiet minutes: counting starts again
    secret = "s" * 64
    cookie = auth.device_cookie(secret, "ada")
    assert auth.device_ok(secret, cookie, "ada") and not auth.device_ok(secret, cookie, "bob")
    assert not auth.device_ok("t" * 64, cookie, "ada") and not auth.device_ok(secret, cookie[:-1] + ("1" if cookie[-1] == "0" else "0"), "ada")


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_for_is_believed_only_from_named_proxies(db, people, trusted):
    import uvicorn

    app = create_app(db, limiter=auth.LoginLimiter(attempts=2, window=60, free=100))
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, "127.0.0.1" if trusted else None,
                                          log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            field, token = csrf_of(c.get("/login").text)
            codes = [c.post("/login", data={"username": f"nobody{i}", "password": "x" * 8, field: token},
                            headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(10)]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    if trusted:  # every try really came from another address (as the proxy says): no address limit
        assert codes == [401] * 10
    else:  # a forged header changes nothing: the loopback peer has 4 * 2 = 8 failures per minute
        assert codes == [401] * 8 + [429, 429]


def test_operator_can_forbid_typed_draft_urls(db, people):
    with Recorder("attacker-model") as attacker:
        app = create_app(db, draft_endpoints=Endpoints(), allow_draft_urls=False)
        ada = login(TestClient(app, follow_redirects=False), "ada", PW)
        r = post_form(ada, "/admin", "/admin/projects", {"name": "typed", "draft_base_url": attacker.url})
        assert r.status_code == 400 and "only drafts with the endpoints" in r.text
        assert 'name="draft_base_url"' not in ada.get("/admin").text
        with db.session() as s:  # a URL typed before the operator turned them off
            pid = service.create_project(s, "old", draft_base_url=attacker.url).id
            u = user(s, "lee")
            service.submit_text(s, service.next_task(s, service.get_project(s, pid), u, "prompt"), u, "hi")
        client, task_id, token = reply_task(db, app, "kim", pid)
        r = client.post(f"/api/tasks/{task_id}/draft", json={}, headers={"X-CSRF-Token": token})
        assert r.status_code == 502 and "only drafts with the endpoints" in r.json()["error"]
        assert attacker.seen == []  # the server sent nothing there
