"""Labeling app: schema and migrations, service rules (queue, provenance, locking), routes and security, import/export,
CLI. Runs against a real SQLite file, and against PostgreSQL too when CHATLOOM_TEST_PG is set to a URL."""

from __future__ import annotations

import json
import os
import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from chatloom.label import auth, service, transfer
from chatloom.label.app import create_app
from chatloom.label.db import Database, current_revision, head_revision, migrate
from chatloom.label.editdistance import levenshtein, normalized
from chatloom.label.models import Base, Message, Review, Task

from .label_live import PW, csrf_of, login, post_form, user

pytest_plugins = ["tests.label_live"]  # the database fixtures: db_url, db, people, cheap hashing



def new_project(db, name="p", **kw):
    with db.session() as s:
        return service.create_project(s, name, creator=user(s, "ada"), **kw).id


def do_task(db, name, project_id, kind, text_=None, draft=None):
    """Take the next task of `kind` for `name` and finish it; returns the new row's id (or None if no work)."""
    with db.session() as s:
        u = user(s, name)
        task = service.next_task(s, service.get_project(s, project_id), u, kind)
        if task is None:
            return None
        if draft:
            service.store_draft(s, task.id, u, *draft)
        if kind in ("prompt", "reply", "followup"):
            return service.submit_text(s, task, u, text_).id
        if kind == "review":
            return service.submit_review(s, task, u, 4, {"helpful": True}).id
        replies = service.siblings_to_rank(s, task.target_id)
        order = sorted((m.id for m in replies), key=lambda mid: text_.index(mid)) if text_ else [m.id for m in replies]
        return service.submit_ranking(s, task, u, order).id


# ---------------------------------------------------------------------------------------------------- schema, utils


def test_migrations_create_exactly_the_models_and_are_idempotent(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrate(db.engine)  # second run: nothing to do
    assert current_revision(db.engine) == head_revision()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def reference_levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[:], i
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
    return row[-1]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab c\u00e9\U0001f600", max_size=40), st.text(alphabet="ab c\u00e9\U0001f600", max_size=40))
def test_levenshtein_equals_the_dynamic_programming_table(a, b):
    assert levenshtein(a, b) == reference_levenshtein(a, b) == levenshtein(b, a)
    assert 0.0 <= normalized(a, b) <= 1.0


def test_levenshtein_long_texts():
    a = "The quick brown fox jumps over the lazy dog. " * 100
    b = a.replace("lazy", "sleepy", 3)
    assert levenshtein(a, b) == 3 * reference_levenshtein("lazy", "sleepy")
    assert levenshtein("", "x" * 70) == 70 and levenshtein("kitten", "sitting") == 3


# ---------------------------------------------------------------------------------------------------------- service


def test_tree_grows_with_provenance_and_export_follows_the_ranking(db, people):
    pid = new_project(db)
    prompt = do_task(db, "lee", pid, "prompt", "How do I reverse a list in Python?")
    drafted = do_task(db, "max", pid, "reply", "Use reversed(xs) or xs[::-1].", draft=("tiny-model", "Use xs[::-1]."))
    plain = do_task(db, "kim", pid, "reply", "Call xs.reverse() to reverse in place.")
    assert do_task(db, "lee", pid, "reply", "x") is None  # nobody answers their own prompt
    assert do_task(db, "kim", pid, "reply", "x") is None  # replies_per_prompt=2 is full
    assert do_task(db, "max", pid, "rank") is None  # max wrote one of the replies
    do_task(db, "rev", pid, "rank", [plain, drafted])  # the reply without draft is ranked first
    assert do_task(db, "rev", pid, "review") is not None
    with db.session() as s:
        ada = user(s, "ada")
        v2 = service.save_instructions(s, pid, "# v2\nBe brief.", author=ada, base_version=1)
        assert v2.version == 2
    follow = do_task(db, "max", pid, "followup", "And for a string?")
    with db.session() as s:
        m = s.get(Message, drafted)
        assert (m.author.name, m.draft_model, m.draft_text) == ("max", "tiny-model", "Use xs[::-1].")
        assert m.edit_distance == levenshtein("Use xs[::-1].", "Use reversed(xs) or xs[::-1].")
        assert m.instruction_version == 1 and m.time_spent_s >= 0
        assert s.get(Message, follow).instruction_version == 2
        assert s.get(Message, follow).parent_id == plain  # follow-ups continue the best... or any unanswered reply
        best = transfer.export_project(s, service.get_project(s, pid), "best")
        every = transfer.export_project(s, service.get_project(s, pid), "all")
    assert len(best) == 1 and len(every) == 2
    conv = best[0]
    assert [m.content for m in conv.messages] == ["How do I reverse a list in Python?", "Call xs.reverse() to reverse in place."]
    assert conv.meta["authors"] == ["labeler:lee", "labeler:kim"] and conv.meta["source"] == "labeling:p"
    drafted_conv = next(c for c in every if c.messages[-1].content.startswith("Use reversed"))
    assert drafted_conv.meta["draft"]["model"] == "tiny-model"
    assert drafted_conv.meta["draft"]["edit_chars"] == levenshtein("Use xs[::-1].", "Use reversed(xs) or xs[::-1].")
    assert 0 < drafted_conv.meta["draft"]["edit_distance"] < 1
    assert drafted_conv.meta["messages"][1]["rank_score"] == 0.0 and conv.meta["messages"][1]["rank_score"] == 1.0
    assert prompt == conv.meta["messages"][0]["id"]


def test_queue_fills_trees_evenly_and_reserves_slots(db, people):
    pid = new_project(db, replies_per_prompt=1)
    prompts = [do_task(db, "lee", pid, "prompt", f"question {i}") for i in range(3)]
    with db.session() as s:
        p = service.get_project(s, pid)
        t1 = service.next_task(s, p, user(s, "max"), "reply")
        t2 = service.next_task(s, p, user(s, "kim"), "reply")
        t3 = service.next_task(s, p, user(s, "ada"), "reply")
        again = service.next_task(s, p, user(s, "max"), "reply")
        assert again.id == t1.id  # asking twice does not take two slots
        assert sorted([t1.target_id, t2.target_id, t3.target_id]) == prompts  # one per tree, none twice
        assert service.next_task(s, p, user(s, "rev"), "rank") is None
        with pytest.raises(service.Forbidden):
            service.next_task(s, p, user(s, "rev"), "prompt")


def test_nobody_reviews_their_own_message(db, people):
    pid = new_project(db)
    mid = do_task(db, "lee", pid, "prompt", "my own prompt")
    assert do_task(db, "lee", pid, "review") is None
    with db.session() as s:
        with pytest.raises(service.Forbidden):
            service.review_task_for(s, user(s, "lee"), mid)
        forged = Task(project_id=pid, kind="review", user_id=user(s, "lee").id, target_id=mid, instruction_version=1)
        s.add(forged)
        s.flush()
        with pytest.raises(service.Forbidden):
            service.submit_review(s, forged, user(s, "lee"), 5, {})
        forged.status = "skipped"  # the forged task held the only review slot
    assert do_task(db, "max", pid, "review") is not None


def test_double_submit_saves_once(db, people):
    pid = new_project(db)
    with db.session() as s:
        task = service.next_task(s, service.get_project(s, pid), user(s, "lee"), "prompt")
        service.submit_text(s, task, user(s, "lee"), "first")
    with db.session() as s, pytest.raises(service.Conflict):
        service.submit_text(s, s.get(Task, task.id), user(s, "lee"), "second")
    with db.session() as s:
        assert [m.text for m in s.scalars(select(Message))] == ["first"]


def test_import_seeds_and_conversations_is_idempotent_and_names_bad_lines(db, people, tmp_path):
    pid = new_project(db)
    good = tmp_path / "seed.jsonl"
    good.write_text(json.dumps({"prompt": "Name three rivers."}) + "\n" + json.dumps(
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]}) + "\n", encoding="utf-8")
    with db.session() as s:
        r = transfer.import_file(s, service.get_project(s, pid), good)
        assert (r.prompts, r.conversations, r.duplicates) == (1, 1, 0)
        again = transfer.import_file(s, service.get_project(s, pid), good)
        assert (again.prompts, again.duplicates) == (0, 2)
    assert do_task(db, "rev", pid, "review") is not None  # imported messages enter the review queue
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"messages": [{"role": "wizard", "content": "x"}]})
                   + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*2.*role"), db.session() as s:
        transfer.import_file(s, service.get_project(s, pid), bad)
    from chatloom.conversation import Rejects
    rejects = Rejects(tmp_path / "rejects.jsonl")
    with db.session() as s:
        r = transfer.import_file(s, service.get_project(s, pid), bad, on_error="skip", rejects=rejects)
    assert (r.prompts, r.rejected) == (1, 1) and (tmp_path / "rejects.jsonl").exists()
    with db.session() as s:
        exported = transfer.export_project(s, service.get_project(s, pid), "all")
    assert [c.messages[0].content for c in exported] == ["Be terse."]


def test_instruction_versions_conflict_instead_of_overwrite(db, people):
    pid = new_project(db)
    with db.session() as s:
        assert "Truthful" in service.current_instructions(s, pid).markdown  # chatloom's default set
        service.save_instructions(s, pid, "A", author=user(s, "ada"), base_version=1)
    with db.session() as s, pytest.raises(service.Conflict, match="version 2 was saved meanwhile"):
        service.save_instructions(s, pid, "B", author=user(s, "ada"), base_version=1)
    with db.session() as s:
        assert [v.markdown for v in service.instruction_versions(s, pid)][:1] == ["A"]
        with pytest.raises(service.Forbidden):
            service.save_instructions(s, pid, "C", author=user(s, "lee"), base_version=2)


def test_stats_agreement_and_drafts_kept(db, people):
    pid = new_project(db, reviews_per_message=2)
    do_task(db, "lee", pid, "prompt", "Q")
    do_task(db, "max", pid, "reply", "kept as is", draft=("m", "kept as is"))
    do_task(db, "kim", pid, "reply", "rewritten", draft=("m", "something else"))
    with db.session() as s:
        for name, quality in (("rev", 4), ("ada", 5)):
            u = user(s, name)
            service.submit_review(s, service.review_task_for(s, u, 1), u, quality, {})
    with db.session() as s:
        rows = {r["user"]: r for r in service.labeler_stats(s)}
        progress = service.project_progress(s, service.get_project(s, pid))
    assert rows["max"]["drafts_unchanged"] == 1.0 and rows["kim"]["drafts_unchanged"] == 0.0
    assert rows["rev"]["agreement"] == 1.0 and rows["rev"]["reviews"] == 1  # 4 and 5 for the same message: agree
    assert rows["lee"]["tasks"] == 1
    assert progress["replies_pct"] == 100.0 and progress["trees"] == 1


# ----------------------------------------------------------------------------------------------------------- routes


@pytest.fixture
def app(db, people):
    return create_app(db)


def client_for(app, name=None):
    c = TestClient(app, follow_redirects=False)
    return login(c, name, PW) if name else c


def test_login_page_cookie_flags_and_rate_limit(db, people):
    app = create_app(db, limiter=auth.LoginLimiter(base=120))  # a wait no slow machine outlasts between two requests
    c = client_for(app)
    page = c.get("/login")
    assert page.status_code == 200
    for field in ('name="username"', 'name="password"', 'type="hidden" name="csrf'):
        assert field in page.text
    field, token = csrf_of(page.text)
    assert c.post("/login", data={"username": "lee", "password": "nope", field: token}).status_code == 401
    ok = c.post("/login", data={"username": "lee", "password": PW, field: token})
    assert ok.status_code == 303
    cookie = next(h for k, h in ok.headers.multi_items() if k == "set-cookie" and h.startswith("chatloom_session="))
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    owner = client_for(app, "max")  # max has logged in from this browser before: it carries a device cookie
    owner.post("/logout", data={"csrf_token": csrf_of(owner.get("/tasks").text)[1]})
    attacker = client_for(app)
    f2, t2 = csrf_of(attacker.get("/login").text)
    codes = [attacker.post("/login", data={"username": "max", "password": f"guess{i}", f2: t2}).status_code
             for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]  # 3 free guesses, then the account waits
    f3, t3 = csrf_of(attacker.get("/login").text)
    assert attacker.post("/login", data={"username": "max", "password": PW, f3: t3}).status_code == 429  # even right
    f4, t4 = csrf_of(owner.get("/login").text)  # ... but the guessing does not lock max out of their own browser
    assert owner.post("/login", data={"username": "max", "password": PW, f4: t4}).status_code == 303


def test_every_post_needs_a_csrf_token(app):
    anon = client_for(app)
    anon.get("/login")
    assert anon.post("/login", data={"username": "lee", "password": PW}).status_code == 403
    c = client_for(app, "ada")
    assert c.post("/admin/projects", data={"name": "x"}).status_code == 403
    assert c.post("/admin/projects", data={"name": "x", "csrf_token": "0" * 64}).status_code == 403
    assert c.post("/api/preview", json={"task_id": 1, "text": "x"}).status_code == 403
    r = post_form(c, "/admin", "/admin/projects", {"name": "x"})
    assert r.status_code == 303
    other = client_for(app, "lee")  # a token from someone else's session does not work either
    _, ada_token = csrf_of(c.get("/admin").text)
    assert other.post("/projects/1/next", data={"kind": "prompt", "csrf_token": ada_token}).status_code == 403


def test_roles_are_checked_on_every_route(app, db):
    pid = new_project(db)
    anon = client_for(app)
    assert anon.get("/tasks").status_code == 303 and anon.get("/tasks").headers["location"].startswith("/login")
    assert anon.get("/admin").status_code == 303
    lee = client_for(app, "lee")
    assert lee.get("/admin").status_code == 403
    assert lee.get(f"/admin/projects/{pid}").status_code == 403
    assert lee.get(f"/admin/projects/{pid}/export").status_code == 403
    assert post_form(lee, "/tasks", "/admin/projects", {"name": "mine"}).status_code == 403
    assert post_form(lee, "/tasks", "/admin/users", {"username": "evil", "role": "admin", "password": PW}).status_code == 403
    rev = client_for(app, "rev")
    assert post_form(rev, "/tasks", f"/projects/{pid}/next", {"kind": "prompt"}).status_code == 403
    ada = client_for(app, "ada")
    assert ada.get("/admin").status_code == 200 and ada.get(f"/admin/projects/{pid}").status_code == 200


def submit_prompt(client, pid, text_):
    r = post_form(client, "/tasks", f"/projects/{pid}/next", {"kind": "prompt"})
    assert r.status_code == 303, r.text
    task_url = r.headers["location"]
    r = post_form(client, task_url, task_url, {"text": text_})
    assert r.status_code == 303, r.text
    return task_url


def test_labeler_cannot_review_own_message_over_http(app, db):
    pid = new_project(db)
    lee = client_for(app, "lee")
    submit_prompt(lee, pid, "a prompt by lee")
    with db.session() as s:
        mid = s.scalar(select(Message.id))
    r = post_form(lee, f"/messages/{mid}", f"/messages/{mid}/review", {})
    assert r.status_code == 403 and "own message" in r.text
    max_ = client_for(app, "max")
    r = post_form(max_, f"/messages/{mid}", f"/messages/{mid}/review", {})
    assert r.status_code == 303
    task_url = r.headers["location"]
    assert post_form(max_, task_url, task_url, {"quality": "5", "helpful": "on"}).status_code == 303
    with db.session() as s:
        review = s.scalar(select(Review))
        assert (review.quality, review.helpful, review.spam) == (5, True, False)


PAYLOAD = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


def test_script_payloads_render_as_text(app, db):
    pid = new_project(db, system_prompt=PAYLOAD)
    lee = client_for(app, "lee")
    submit_prompt(lee, pid, PAYLOAD)
    ada = client_for(app, "ada")
    with db.session() as s:
        service.save_instructions(s, pid, "# Rules\n" + PAYLOAD + "\n\n[x](javascript:alert(1))", author=user(s, "ada"),
                                  base_version=1)
    r = post_form(client_for(app, "max"), "/tasks", f"/projects/{pid}/next", {"kind": "reply"})
    max_ = client_for(app, "max")
    page = max_.get(r.headers["location"]).text
    for html in (page, ada.get(f"/projects/{pid}/instructions").text, ada.get("/messages/1").text):
        assert "<script>alert" not in html and "<img src=x" not in html and 'href="javascript:' not in html, \
            html[max(0, html.find("<script>alert") - 300):html.find("<script>alert") + 100]
        assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html or "&lt;script&gt;alert(&quot;pwned&quot;)" in html
    assert post_form(ada, "/admin", "/admin/projects", {"name": PAYLOAD}).status_code == 303
    assert post_form(ada, "/admin", "/admin/users", {"username": "<script>alert(2)</script>", "role": "labeler",
                                                     "password": PW}).status_code == 303
    admin_page = ada.get("/admin").text
    assert "<script>alert" not in admin_page and "&lt;script&gt;alert(2)" in admin_page
    assert "default-src 'self'" in max_.get("/tasks").headers["content-security-policy"]


SQLISH = "Robert'); DROP TABLE messages;-- \" OR 1=1; SELECT * FROM users WHERE name = 'x' --"


def test_sql_looking_text_is_stored_verbatim(app, db):
    pid = new_project(db)
    lee = client_for(app, "lee")
    submit_prompt(lee, pid, SQLISH)
    with db.session() as s:
        assert s.scalar(select(Message.text)) == SQLISH
        assert s.scalar(select(text("count(*)")).select_from(Message)) == 1
        exported = s.execute(select(Message.text).where(Message.text == SQLISH)).scalars().all()
    assert exported == [SQLISH]
    r = post_form(lee, "/tasks", f"/projects/{pid}/next", {"kind": "prompt"})
    assert r.status_code == 303  # the tables are all still there


def test_concurrent_edit_gets_a_conflict_not_an_overwrite(app, db):
    pid = new_project(db)
    lee = client_for(app, "lee")
    submit_prompt(lee, pid, "version one")
    ada = client_for(app, "ada")
    form_lee, form_ada = lee.get("/messages/1/edit").text, ada.get("/messages/1/edit").text
    version = re.search(r'name="version" value="(\d+)"', form_lee).group(1)
    assert version == re.search(r'name="version" value="(\d+)"', form_ada).group(1)
    first = lee.post("/messages/1/edit", data={"text": "lee's edit", "version": version, "csrf_token": csrf_of(form_lee)[1]})
    assert first.status_code == 303
    second = ada.post("/messages/1/edit", data={"text": "ada's edit", "version": version, "csrf_token": csrf_of(form_ada)[1]})
    assert second.status_code == 409 and "changed meanwhile" in second.text and "ada&#39;s edit" in second.text
    with db.session() as s:
        m = s.get(Message, 1)
        assert (m.text, m.version) == ("lee's edit", 2)
    assert post_form(client_for(app, "max"), "/tasks", "/messages/1/edit", {"text": "x", "version": "2"}).status_code == 403


def test_preview_endpoint_marks_supervised_tokens(app, db):
    pid = new_project(db, system_prompt="Be kind.")
    submit_prompt(client_for(app, "lee"), pid, "Say hi")
    max_ = client_for(app, "max")
    task_url = post_form(max_, "/tasks", f"/projects/{pid}/next", {"kind": "reply"}).headers["location"]
    _, token = csrf_of(max_.get(task_url).text)
    task_id = int(task_url.rsplit("/", 1)[1])
    r = max_.post("/api/preview", json={"task_id": task_id, "text": "Hi there!"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200, r.text
    data = r.json()
    assert [m["role"] for m in data["per_message"]] == ["system", "user", "assistant"]
    supervised = "".join(t for t, sup, _ in data["tokens"] if sup)
    assert supervised == "Hi there!<|im_end|>" and data["num_supervised"] == data["per_message"][2]["supervised"]
    r = max_.post(f"/api/tasks/{task_id}/draft", json={}, headers={"X-CSRF-Token": token})
    assert r.status_code == 502 and "no draft model configured" in r.json()["error"]
    lee = client_for(app, "lee")
    _, lee_token = csrf_of(lee.get("/tasks").text)
    assert lee.post("/api/preview", json={"task_id": task_id, "text": "x"},
                    headers={"X-CSRF-Token": lee_token}).status_code == 403  # not lee's task


def test_admin_pages_show_progress_stats_and_versions(app, db):
    ada = client_for(app, "ada")
    r = post_form(ada, "/admin", "/admin/projects", {"name": "demo", "protocol": "gpt4o", "replies_per_prompt": "2"})
    assert r.status_code == 303
    project_url = r.headers["location"]
    page = ada.get(project_url).text
    assert "current v1" in page and "Helpful" in page
    base = re.search(r'name="base_version" value="(\d+)"', page).group(1)
    _, token = csrf_of(page)
    assert ada.post(project_url + "/instructions", data={"markdown": "# New rules", "base_version": base,
                                                         "csrf_token": token}).status_code == 303
    stale = ada.post(project_url + "/instructions", data={"markdown": "# Other", "base_version": base, "csrf_token": token})
    assert stale.status_code == 409 and "# Other" in stale.text
    pid = int(project_url.rsplit("/", 1)[1])
    submit_prompt(client_for(app, "lee"), pid, "hello?")
    assert 'id="trees"' in ada.get(project_url).text and "hello?" in ada.get(project_url).text
    r = post_form(ada, project_url, project_url + "/settings", {"draft_base_url": "http://127.0.0.1:9/v1",
                                                                 "draft_model": "m2", "replies_per_prompt": "3"})
    assert r.status_code == 303
    assert post_form(ada, project_url, project_url + "/settings", {"max_depth": "99"}).status_code == 400
    assert post_form(client_for(app, "lee"), "/tasks", project_url + "/settings", {"draft_model": "x"}).status_code == 403
    with db.session() as s:
        p = service.get_project(s, pid)
        assert (p.draft_base_url, p.draft_model, p.replies_per_prompt, p.max_depth) == ("http://127.0.0.1:9/v1", "m2", 3, 3)
    admin = ada.get("/admin").text
    assert 'id="labeler-stats"' in admin and "<td>lee</td>" in admin and 'id="progress"' in admin
    export = ada.get(project_url + "/export?threads=all")
    assert export.status_code == 409 and "no assistant reply yet" in export.text  # said, not an empty file


def test_cli_user_import_export(db_url, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from chatloom.cli import app as cli

    runner = CliRunner()
    r = runner.invoke(cli, ["label", "user", "add", "root", "--role", "admin", "--db", db_url, "--password-stdin"],
                      input=PW + "\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["label", "user", "add", "root", "--role", "admin", "--db", db_url, "--password-stdin"],
                      input=PW + "\n")
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(cli, ["label", "user", "add", "typed", "--role", "reviewer", "--db", db_url],
                      input=f"{PW}\n{PW}\n")  # asked twice, hidden
    assert r.exit_code == 0 and "added reviewer 'typed'" in r.output, r.output
    r = runner.invoke(cli, ["label", "user", "add", "short", "--role", "labeler", "--db", db_url, "--password-stdin"],
                      input="abc\n")
    assert r.exit_code == 2 and "at least 8 characters" in r.output
    r = runner.invoke(cli, ["label", "user", "add", "x", "--role", "boss", "--db", db_url, "--password-stdin"], input=PW + "\n")
    assert r.exit_code == 2 and "role must be one of" in r.output
    seed = tmp_path / "seed.jsonl"
    seed.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                                "meta": {"authors": ["human:a", "human:b"]}}) + "\n", encoding="utf-8")
    r = runner.invoke(cli, ["label", "import", str(seed), "--project", "math", "--db", db_url])
    assert r.exit_code == 0 and "1 conversations" in r.output, r.output
    out = tmp_path / "out.jsonl"
    r = runner.invoke(cli, ["label", "export", "--project", "math", "-o", str(out), "--threads", "best", "--db", db_url])
    assert r.exit_code == 0, r.output
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["messages"][1]["content"] == "4" and record["meta"]["authors"] == ["human:a", "human:b"]
    r = runner.invoke(cli, ["label", "export", "--project", "nope", "-o", str(out), "--db", db_url])
    assert r.exit_code == 2 and "no project named 'nope'" in r.output
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a river."}) + "\n", encoding="utf-8")
    assert runner.invoke(cli, ["label", "import", str(prompts), "--project", "fresh", "--db", db_url]).exit_code == 0
    empty = tmp_path / "empty.jsonl"
    r = runner.invoke(cli, ["label", "export", "--project", "fresh", "-o", str(empty), "--threads", "best", "--db", db_url])
    assert r.exit_code == 2 and "no assistant reply yet" in r.output and not empty.exists()  # said, not an empty file


def test_withdrawn_messages_stay_in_the_database_but_leave_queues_and_exports(app, db):
    pid = new_project(db, replies_per_prompt=1)
    do_task(db, "lee", pid, "prompt", "keep me")
    reply = do_task(db, "max", pid, "reply", "withdraw me")
    lee = client_for(app, "lee")
    assert post_form(lee, "/tasks", f"/admin/messages/{reply}/withdraw", {}).status_code == 403
    ada = client_for(app, "ada")
    assert post_form(ada, f"/messages/{reply}", f"/admin/messages/{reply}/withdraw", {}).status_code == 303
    with db.session() as s:
        m = s.get(Message, reply)
        assert m.deleted and m.text == "withdraw me"
        assert transfer.export_project(s, service.get_project(s, pid), "all") == []
    assert do_task(db, "kim", pid, "reply", "a better reply") is not None  # the slot is open again


def test_label_serve_migrates_and_serves(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from .label_live import free_port

    port, db_file = free_port(), tmp_path / "served.db"
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen([sys.executable, "-m", "chatloom.cli", "label", "serve", "--db", f"sqlite:///{db_file}",
                             "--host", "127.0.0.1", "--port", str(port)], env={**os.environ, "PYTHONPATH": src},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "label serve did not come up"
                time.sleep(0.2)
        assert page.status_code == 200 and 'name="password"' in page.text
        assert "chatloom_anon" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
        assert httpx.get(f"http://127.0.0.1:{port}/static/app.js", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    served = Database(f"sqlite:///{db_file}", run_migrations=False)
    assert current_revision(served.engine) == head_revision()
    served.dispose()


ACTORS = ("ada", "lee", "max", "kim", "rev")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ACTORS), st.sampled_from([None, *service.KIND_ROLES]), st.booleans()),
                min_size=5, max_size=40))
def test_queue_invariants_hold_for_any_sequence_of_work(tmp_path_factory, steps):
    """Whatever people ask for, in any order: nobody is handed their own message, no slot is overbooked, every task is
    closed at most once, and every exported thread is a valid conversation that ends with an assistant reply."""
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'label.db'}")
    with db.session() as s:
        for name, role in [("ada", "admin"), ("lee", "labeler"), ("max", "labeler"), ("kim", "labeler"),
                           ("rev", "reviewer")]:
            auth.add_user(s, name, role, PW)
        pid = service.create_project(s, "prop", replies_per_prompt=2, max_depth=2).id
    for i, (name, kind, skip) in enumerate(steps):
        with db.session() as s:
            u = user(s, name)
            try:
                task = service.next_task(s, service.get_project(s, pid), u, kind)
            except service.Forbidden:
                assert kind is not None and u.role not in service.KIND_ROLES[kind]
                continue
            if task is None:
                continue
            target = s.get(Message, task.target_id) if task.target_id else None
            if target is not None and task.kind != "rank":  # a rank task targets the prompt; its replies are checked below
                assert target.author_id != u.id  # never your own message
            if skip:
                service.skip_task(s, task, u)
            elif task.kind in ("prompt", "reply", "followup"):
                service.submit_text(s, task, u, f"step {i} {task.kind} by {name}")
            elif task.kind == "review":
                service.submit_review(s, task, u, 1 + i % 5, {"spam": i % 7 == 0})
            else:
                replies = service.siblings_to_rank(s, task.target_id)
                assert all(m.author_id != u.id for m in replies) and len(replies) >= 2
                service.submit_ranking(s, task, u, [m.id for m in reversed(replies)])
    with db.session() as s:
        msgs = list(s.scalars(select(Message)))
        for m in msgs:
            kids = [c for c in msgs if c.parent_id == m.id]
            if m.role == "user":
                assert len(kids) <= 2 and all(c.role == "assistant" for c in kids)
                assert len({c.author_id for c in kids}) == len(kids)  # one reply per person per prompt
            else:
                assert len(kids) <= 1 and all(c.role == "user" for c in kids) and (m.depth + 1) // 2 <= 2
        reviews = list(s.scalars(select(Review)))
        assert all(s.get(Message, r.message_id).author_id != r.reviewer_id for r in reviews)
        assert len({r.task_id for r in reviews}) == len(reviews)
        closed = s.scalars(select(Task).where(Task.status != "open")).all()
        assert all(t.done_at is not None for t in closed)
        for threads in ("best", "all"):
            for conv in transfer.export_project(s, service.get_project(s, pid), threads):
                conv.validate(require_assistant_end=True)
                assert len(conv.meta["messages"]) == len(conv.messages)
    db.dispose()
