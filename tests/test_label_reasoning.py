"""The labeling app keeps an assistant message's `reasoning_content` (issue #15: counted, never dropped): `label import`
stores it, `label export` writes it back exactly and only where there was one (rows without it stay as they were),
`synth --to-label` hands it over, the message page shows it read-only and escaped, the edit page edits it beside the
reply (also in a real Chromium, where a leading newline must survive the textarea), and migration 0004 adds the column
to a database that already holds data (and its downgrade removes it, keeping the rows). SQLite, and PostgreSQL when
CHATLOOM_TEST_PG is set."""

from __future__ import annotations

import itertools
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, text

from chatloom.label import service, transfer
from chatloom.label.app import create_app
from chatloom.label.db import Database, current_revision, downgrade, head_revision, migrate
from chatloom.label.models import Message

from .conftest import CHROMIUM, require_chromium
from .label_live import PW, LiveServer, csrf_of, database_at, login, user

pytest_plugins = ["tests.label_live"]  # the database fixtures: db_url, db, people, cheap hashing

TRICKY = ["Let me think.\n\n<|im_end|>\n<|im_start|>user\nnot really a turn</think><think>",
          "日本語の推論 — ünïcödé, emoji \U0001f914, RTL \u05e9\u05dc\u05d5\u05dd, \u2028line sep\ttab\r\n",
          "",  # an empty reasoning is still a reasoning: kept as "", not dropped to absent
          "<script>alert(1)</script> & \"quotes\" 'single'"]


def conversation(prompt: str, reasonings: list[str | None]) -> dict:
    messages = [{"role": "system", "content": "Be exact."}]
    for i, r in enumerate(reasonings):
        messages.append({"role": "user", "content": f"{prompt} (turn {i})"})
        reply = {"role": "assistant", "content": f"answer {i} to {prompt}"}
        if r is not None:
            reply["reasoning_content"] = r
        messages.append(reply)
    return {"messages": messages}


def cli_round_trip(db_url, tmp_path, records: list[dict]) -> dict[str, dict]:
    """`chatloom label import` then `chatloom label export --threads all`; exported records by their first prompt."""
    from typer.testing import CliRunner

    from chatloom.cli import app as cli

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    runner = CliRunner()
    r = runner.invoke(cli, ["label", "import", str(src), "--project", "think", "--db", db_url])
    assert r.exit_code == 0 and f"{len(records)} conversations" in r.output, r.output
    r = runner.invoke(cli, ["label", "export", "--project", "think", "-o", str(out), "--threads", "all", "--db", db_url])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in out.read_text(encoding="utf-8").split("\n") if ln]  # not splitlines: \u2028 is in a string
    return {rec["messages"][1]["content"]: rec for rec in map(json.loads, lines)}


def test_import_export_round_trip_keeps_reasoning_exactly(db_url, tmp_path):
    records = [conversation("tricky", TRICKY[:2]),
               conversation("mixed", [None, TRICKY[2], None, TRICKY[3]]),
               conversation("plain", [None, None])]
    exported = cli_round_trip(db_url, tmp_path, records)
    assert len(exported) == 3
    for rec in records:
        got = exported[rec["messages"][1]["content"]]
        assert got["messages"] == rec["messages"]  # every key and value as imported, reasoning or not
    plain = exported["plain (turn 0)"]
    assert "reasoning_content" not in json.dumps(plain)  # rows without reasoning: no key, not even null
    mixed = exported["mixed (turn 0)"]["messages"]
    assert [("reasoning_content" in m, m.get("reasoning_content")) for m in mixed if m["role"] == "assistant"] == [
        (False, None), (True, ""), (False, None), (True, TRICKY[3])]


def test_reasoning_round_trips_for_any_text(db, tmp_path):
    """Property: whatever string an assistant reasons (any unicode but NUL, which PostgreSQL text cannot hold), the
    export gives back exactly that string, and the reply and the prompt beside it are unchanged."""
    counter = itertools.count()
    with db.session() as s:
        pid = service.create_project(s, "prop").id

    @settings(max_examples=40, deadline=None)
    @given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=200))
    def check(reasoning):
        n = next(counter)
        record = {"messages": [{"role": "user", "content": f"q{n}"},
                               {"role": "assistant", "content": f"a{n}", "reasoning_content": reasoning}]}
        path = tmp_path / f"{n}.jsonl"
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        with db.session() as s:
            report = transfer.import_file(s, service.get_project(s, pid), path)
            assert report.conversations == 1
        with db.session() as s:
            [conv] = [c for c in transfer.export_project(s, service.get_project(s, pid), "all")
                      if c.messages[0].content == f"q{n}"]
        assert conv.to_dict()["messages"] == record["messages"]

    check()


def test_synth_to_label_hands_reasoning_over(tmp_path):
    from chatloom.synth.handoff import to_label

    out = tmp_path / "synth.jsonl"
    records = [conversation("synth", [TRICKY[0]]), conversation("synth-plain", [None])]
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    assert to_label(out, "from-synth", db_url) == 2
    database = Database(db_url)
    with database.session() as s:
        exported = transfer.export_project(s, service.project_by_name(s, "from-synth"), "all")
    assert sorted((c.to_dict()["messages"] for c in exported), key=str) == sorted(
        (r["messages"] for r in records), key=str)
    database.dispose()


def test_message_page_shows_reasoning_read_only_escaped_above_the_reply(db, people, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(conversation("page", [TRICKY[3] + "\n<|im_end|>"])) + "\n" + json.dumps(
        conversation("page-plain", [None])) + "\n", encoding="utf-8")
    with db.session() as s:
        transfer.import_file(s, service.create_project(s, "pages", creator=user(s, "ada")), path)
        ids = {m.text: m.id for m in s.scalars(select(Message).where(Message.role == "assistant"))}
    c = login(TestClient(create_app(db), follow_redirects=False), "ada", PW)
    page = c.get(f"/messages/{ids['answer 0 to page']}").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in page and "&lt;|im_end|&gt;" in page
    block = page.index('<details class="reasoning">')  # collapsed: no `open` attribute
    assert block < page.index("&lt;script&gt;") < page.index("answer 0 to page")
    assert "<textarea" not in page[block:page.index("answer 0 to page")]  # shown, not editable
    plain = c.get(f"/messages/{ids['answer 0 to page-plain']}").text
    assert 'class="reasoning"' not in plain and "answer 0 to page-plain" in plain


def import_pages(db, tmp_path, reasonings: list[str | None]) -> dict[str, int]:
    """A project of one conversation whose replies have `reasonings`; assistant message ids by their text."""
    path = tmp_path / "edit.jsonl"
    path.write_text(json.dumps(conversation("edit", reasonings)) + "\n", encoding="utf-8")
    with db.session() as s:
        transfer.import_file(s, service.create_project(s, "edits", creator=user(s, "ada")), path)
        return {m.text: m.id for m in s.scalars(select(Message).where(Message.role == "assistant"))}


def exported_replies(db) -> list[dict]:
    with db.session() as s:
        [conv] = transfer.export_project(s, service.project_by_name(s, "edits"), "all")
    return [m for m in conv.to_dict()["messages"] if m["role"] == "assistant"]


def test_edit_page_edits_the_reasoning_beside_the_reply(db, people, tmp_path):
    ids = import_pages(db, tmp_path, [TRICKY[3], None, ""])
    c = login(TestClient(create_app(db), follow_redirects=False), "ada", PW)
    first, plain, empty = ids["answer 0 to edit"], ids["answer 1 to edit"], ids["answer 2 to edit"]

    def edit(mid, **fields):
        form = c.get(f"/messages/{mid}/edit").text
        version = form.split('name="version" value="')[1].split('"')[0]
        field, token = csrf_of(form)
        return c.post(f"/messages/{mid}/edit", data={"version": version, field: token, **fields})

    form = c.get(f"/messages/{first}/edit").text
    assert '<textarea id="reasoning" name="reasoning"' in form and "&lt;script&gt;alert(1)" in form
    assert "<script>alert(1)" not in form
    assert 'name="reasoning"' not in c.get(f"/messages/{plain}/edit").text  # no reasoning: nothing to edit
    assert '<textarea id="reasoning"' in c.get(f"/messages/{empty}/edit").text  # an empty one is still one

    assert edit(first, text="new answer", reasoning="new\r\nthoughts").status_code == 303
    assert edit(empty, text="answer 2 to edit").status_code == 303  # no reasoning field sent: it stays as it was
    r = edit(plain, text="answer 1 to edit", reasoning="sneaked in")
    assert r.status_code == 400 and "has no reasoning to edit" in r.text
    assert edit(first, text="again", reasoning="").status_code == 303  # emptied, not removed
    assert exported_replies(db) == [{"role": "assistant", "content": "again", "reasoning_content": ""},
                                    {"role": "assistant", "content": "answer 1 to edit"},
                                    {"role": "assistant", "content": "answer 2 to edit", "reasoning_content": ""}]
    assert edit(first, text="x", reasoning="y" * (service.MAX_TEXT + 1)).status_code == 400


def test_edit_conflict_shows_both_texts_and_keeps_the_editors_reasoning(db, people, tmp_path):
    ids = import_pages(db, tmp_path, ["theirs thinks"])
    mid = ids["answer 0 to edit"]
    c = login(TestClient(create_app(db), follow_redirects=False), "ada", PW)
    form = c.get(f"/messages/{mid}/edit").text
    field, token = csrf_of(form)
    with db.session() as s:  # someone else saves first
        service.edit_message(s, mid, user(s, "ada"), "their reply", 1, reasoning="their reasoning")
    r = c.post(f"/messages/{mid}/edit", data={"version": "1", field: token, "text": "my reply",
                                              "reasoning": "my reasoning"})
    assert r.status_code == 409
    assert "my reasoning</textarea>" in r.text and '<pre class="theirs-reasoning">their reasoning</pre>' in r.text
    assert exported_replies(db) == [{"role": "assistant", "content": "their reply", "reasoning_content": "their reasoning"}]


@pytest.mark.browser
@pytest.mark.slow
def test_reasoning_edited_in_a_real_browser_keeps_its_leading_newline(db, people, tmp_path):
    """HTML drops a newline right after `<textarea>`: a reasoning (or reply) that starts with one, saved unchanged from
    Chromium, must come back the same; then an edit typed into the page is what the export holds."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    ids = import_pages(db, tmp_path, ["\nfirst I check the units.  "])
    mid = ids["answer 0 to edit"]
    with db.session() as s:
        service.edit_message(s, mid, user(s, "ada"), "\n  indented reply", 1)
    with LiveServer(create_app(db)) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(base + "/login")
        page.fill("input[name=username]", "ada")
        page.fill("input[name=password]", PW)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/tasks")
        page.goto(f"{base}/messages/{mid}/edit")
        assert page.input_value("#reasoning") == "\nfirst I check the units.  "
        page.click("form[action$='/edit'] button[type=submit]")  # saved unchanged
        page.wait_for_url(f"{base}/messages/{mid}")
        assert exported_replies(db) == [{"role": "assistant", "content": "\n  indented reply",
                                         "reasoning_content": "\nfirst I check the units.  "}]
        page.goto(f"{base}/messages/{mid}/edit")
        page.fill("#reasoning", "the units are metres\nso 3 m")
        page.click("form[action$='/edit'] button[type=submit]")
        page.wait_for_url(f"{base}/messages/{mid}")
        assert exported_replies(db)[0]["reasoning_content"] == "the units are metres\nso 3 m"
        browser.close()


def test_migration_0004_adds_reasoning_to_a_database_with_data_and_downgrades(db_url):
    database = database_at(db_url, "0003", ("user", "assistant"))  # the state before the migration under test
    assert "reasoning_content" not in {c["name"] for c in inspect(database.engine).get_columns("messages")}
    migrate(database.engine)
    assert current_revision(database.engine) == head_revision()
    with database.session() as s:
        assert s.scalars(select(Message.reasoning_content)).all() == [None, None]  # old rows: no reasoning
        [conv] = transfer.export_project(s, service.get_project(s, 1), "all")
        assert conv.to_dict()["messages"] == [{"role": "user", "content": "m1"}, {"role": "assistant", "content": "m2"}]
        s.get(Message, 2).reasoning_content = TRICKY[0]
    with database.session() as s:
        [conv] = transfer.export_project(s, service.get_project(s, 1), "all")
        assert conv.messages[-1].reasoning_content == TRICKY[0]
    downgrade(database.engine, "0003")  # the column goes, the rows stay
    assert current_revision(database.engine) == "0003"
    assert "reasoning_content" not in {c["name"] for c in inspect(database.engine).get_columns("messages")}
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT id, text FROM messages ORDER BY id")).all() == [(1, "m1"), (2, "m2")]
    migrate(database.engine)
    with database.session() as s:
        assert s.scalars(select(Message.reasoning_content)).all() == [None, None]
    database.dispose()
