"""Fuzz every route of the labeling app, as every role, on a live server over loopback: path ids of every kind (real
ones, 0, negative, past SQLite's integer range, not numbers), JSON / form / raw bodies near the valid ones, with and
without a valid CSRF token. Whatever arrives, the answer is below 500 and the connection keeps working.
The routes are read from the app itself, so a new route is fuzzed without touching this file."""

from __future__ import annotations

import collections
import re
from urllib.parse import quote

import httpx
import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatloom.label import service
from chatloom.label.app import create_app
from chatloom.label.routes import ROUTERS

from .fuzz_http import Form, Target, json_values, mutations, raw_bodies, send
from .label_live import PW, LiveServer, csrf_of, http_client, login, user

pytest_plugins = ["tests.label_live"]  # the database fixtures: db_url, db, people, cheap hashing
PARAM = re.compile(r"\{([^}:]+)\}")
ROLES = ("anonymous", "ada", "lee", "rev")
FIELDS = ["text", "quality", "comment", "version", "kind", "name", "protocol", "tokenizer_path", "draft_endpoint",
          "draft_base_url", "draft_model", "replies_per_prompt", "max_depth", "markdown", "base_version", "username",
          "password", "role", "next", "rank_3", "rank_4", "helpful"]
ids = st.one_of(st.sampled_from(["1", "2", "3", "4", "5", "6"]), st.integers(-(2**70), 2**70).map(str),
                st.sampled_from(["0", "-1", "99999999999999999999", "9223372036854775807", "9223372036854775808",
                                 "1e3", "0x10", " 1", "abc", "..", "%00", "１", "null"]),
                st.text(min_size=1, max_size=8))
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "0", "-1", "3", "99999999999999999999", "on", "chatml",
                                                         "hf", "/etc/passwd", "http://127.0.0.1:9/v1", "x" * 3000]))
forms = st.builds(Form, st.dictionaries(st.sampled_from(FIELDS), texts, max_size=5))
bodies = st.one_of(forms, forms, json_values(8), mutations({"task_id": 1, "text": "hi"}), raw_bodies())


@pytest.fixture
def world(db, people):
    """Some of everything: a project with prompts, replies, a review and a ranking, and open tasks for each person."""
    with db.session() as s:
        p = service.create_project(s, "fuzz", creator=user(s, "ada"))
        for i, (asker, answerers) in enumerate((("lee", ("max", "kim")), ("max", ("lee", "ada")))):
            u = user(s, asker)
            service.submit_text(s, service.next_task(s, p, u, "prompt"), u, f"question {i}")
            for name in answerers:
                a = user(s, name)
                service.submit_text(s, service.next_task(s, p, a, "reply"), a, f"answer by {name}")
        rev = user(s, "rev")
        task = service.next_task(s, p, rev, "rank")
        service.submit_ranking(s, task, rev, [m.id for m in service.siblings_to_rank(s, task.target_id)])
        for name in ("ada", "lee", "rev"):
            service.next_task(s, p, user(s, name))  # an open task each
    return db


def routes_of(routers) -> list[tuple[str, str]]:
    out = []
    for router in routers:
        for r in router.routes:
            if isinstance(r, APIRoute):
                out += [(m, r.path) for m in sorted(r.methods) if m != "HEAD"]
    return out


@pytest.mark.slow
def test_no_route_answers_5xx_to_anyone(world):
    app = create_app(world)
    routes = routes_of(ROUTERS)
    assert len(routes) >= 20 and ("POST", "/messages/{message_id}/review") in routes
    seen: collections.Counter = collections.Counter()
    with LiveServer(app) as base:
        clients: dict[str, httpx.Client] = {}
        tokens: dict[str, str] = {}
        for who in ROLES:
            c = http_client(base)
            if who != "anonymous":
                login(c, who, PW)
            tokens[who] = csrf_of(c.get("/login" if who == "anonymous" else "/tasks").text)[1]
            clients[who] = c

        @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(routes), st.sampled_from(ROLES), st.data(), bodies, st.booleans())
        def fuzz(route, who, data, body, with_csrf):
            method, path = route
            url = PARAM.sub(lambda m: quote(data.draw(ids, label=m.group(1)), safe=""), path)
            if method == "GET" and data.draw(st.booleans(), label="query"):
                url += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in data.draw(
                    st.dictionaries(st.sampled_from(["next", "message", "version", "threads"]), texts, max_size=2),
                    label="query").items())
            if isinstance(body, Form) and with_csrf:
                body = Form({**body.data, "csrf_token": tokens[who]})
            headers = {"X-CSRF-Token": tokens[who]} if with_csrf and not isinstance(body, Form) else {}
            target = Target(base, url, method, client=clients[who], headers=lambda: headers, timeout=60)
            r = send(target, body if method != "GET" else Form({}))
            seen[r.status_code // 100] += 1
            assert r.status_code < 500, f"{who}: {method} {url} {body!r:.200} -> {r.status_code}: {r.text[:300]}"
            assert clients[who].get("/healthz").status_code == 200  # the connection survived

        fuzz()
        for c in clients.values():
            c.close()
    assert seen[2] + seen[3] > 0 and seen[4] > 0, seen  # some requests got through, some were refused
    print("label fuzz statuses by class:", dict(seen))
