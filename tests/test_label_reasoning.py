"""The labeling app keeps an assistant message's `reasoning_content` (issue #15: counted, never dropped): `label import`
stores it, `label export` writes it back exactly and only where there was one (rows without it stay as they were),
`synth --to-label` hands it over, the message page shows it read-only and escaped, and migration 0004 adds the column to
a database that already holds data (and its downgrade removes it, keeping the rows). SQLite, and PostgreSQL when
CHATLOOM_TEST_PG is set."""

from __future__ import annotations

import itertools
import json

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, text

from chatloom.label import service, transfer
from chatloom.label.app import create_app
from chatloom.label.db import Database, current_revision, downgrade, head_revision, migrate
from chatloom.label.models import Message

from .label_live import PW, database_at, login, user

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
