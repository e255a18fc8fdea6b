"""chatloom synth against a real OpenAI-compatible HTTP server on loopback: N conversations with the planned turn counts,
provenance in meta, token accounting, filters with retries, keys never written; plus its pure parts (specs, plans,
filters, seed files, recovery of a torn output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from chatloom.conversation import ValidationError, load
from chatloom.synth import (
    FilterConfig,
    ModelSpec,
    RetryPolicy,
    Seed,
    SpecError,
    SynthConfig,
    load_seeds,
    plan,
    run,
    synth_id,
)
from chatloom.synth.filters import check, is_polite_closing, is_refusal
from chatloom.synth.store import AppendOnlyJsonl, recover

from .synth_fake_api import create_app, deterministic_reply, serve

SEEDS = [Seed("topic", "how volcanoes form"), Seed("question", "Why is the sky blue?"), Seed("topic", "sourdough bread")]


def config(url: str, out: Path, **kw) -> SynthConfig:
    base = dict(seeds=SEEDS, user_model=ModelSpec.parse(f"sim-user@{url}"),
                assistant_model=ModelSpec.parse(f"helper@{url}"), n=9, out=out, turns=(2, 4), concurrency=4,
                progress=False, retry=RetryPolicy(max_retries=2, timeout=5, backoff_base=0.01))
    base.update(kw)
    return SynthConfig(**base)


def test_generates_n_conversations_with_planned_turns_and_provenance(tmp_path):
    app = create_app()
    out = tmp_path / "synth.jsonl"
    with serve(app) as url:
        cfg = config(url, out, system="You are Loom.", user_price=(1.0, 2.0), assistant_price=(3.0, 4.0))
        result = run(cfg)
    convs = list(load(out, require_assistant_end=True))
    assert result.complete and len(convs) == 9
    assert sorted(c.id for c in convs) == sorted(synth_id(0, i) for i in range(9))
    seen_turns = set()
    for c in convs:
        info = c.meta["synth"]
        p = plan(cfg, info["index"])
        roles = [m.role for m in c.messages]
        assert roles == ["system"] + ["user", "assistant"] * p.turns
        assert 2 <= info["turns"] == p.turns <= 4
        seen_turns.add(p.turns)
        assert c.meta["source"] == "synth"
        assert c.meta["authors"] == ["model:sim-user", "model:helper"] * p.turns
        assert info["seed"] == SEEDS[info["index"] % 3].to_dict()
        assert info["persona"] == p.persona
        assert info["user_model"] == {"name": "sim-user", "endpoint": url}
        assert info["assistant_model"] == {"name": "helper", "endpoint": url}
        assert info["sampling"]["assistant"] == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 1024}
        assert not any(m.content.lower().startswith("user:") for m in c.messages)  # the simulator's label is stripped
    assert len(seen_turns) > 1  # the turn count really varies per conversation

    # Token accounting equals what the server reported, per role; cost from the given prices.
    log = app.state.log
    s = json.loads(result.summary_path.read_text())
    for role, prefix in (("user", "sim"), ("assistant", "helper")):
        bodies = [b for _, _, b in log if b["model"].startswith(prefix)]
        completion = sum(len(deterministic_reply(b).split()) for b in bodies)
        prompt = sum(len(m["content"].split()) for b in bodies for m in b["messages"])
        u = s["usage"][role]
        assert (u["requests"], u["prompt_tokens"], u["completion_tokens"]) == (len(bodies), prompt, completion)
    expected_cost = (s["usage"]["user"]["prompt_tokens"] * 1 + s["usage"]["user"]["completion_tokens"] * 2
                     + s["usage"]["assistant"]["prompt_tokens"] * 3 + s["usage"]["assistant"]["completion_tokens"] * 4) / 1e6
    assert s["cost_usd"] == pytest.approx(expected_cost)
    assert s["written"] == 9 and s["missing"] == [] and s["this_run"]["generated"] == 9
    # The assistant saw the system prompt; both saw the sampling parameters and a per-request seed.
    helper_bodies = [b for _, _, b in log if b["model"] == "helper"]
    assert all(b["messages"][0] == {"role": "system", "content": "You are Loom."} for b in helper_bodies)
    assert all(isinstance(b["seed"], int) and b["max_tokens"] == 1024 for b in helper_bodies)
    sent_seeds = {b["seed"] for _, _, b in log}
    for c in convs:  # the per-turn sampling seeds recorded in meta are the ones the endpoints received
        recorded = c.meta["synth"]["sampling"]["request_seeds"]
        assert len(recorded) == 2 * c.meta["synth"]["turns"] and set(recorded) <= sent_seeds


def test_reasoning_of_the_assistant_model_is_kept_and_not_sent_back(tmp_path):
    """A reasoning model's `reasoning_content` lands on the assistant messages of the records; the next turn's request
    carries only contents (earlier reasoning is not sent back, as DeepSeek's API requires and Qwen3 renders it)."""
    def thought(body):
        return None if body["model"].startswith("sim") else f"Thinking about {len(body['messages'])} messages 🤔"

    app = create_app(reasoning=thought)
    out = tmp_path / "synth.jsonl"
    with serve(app) as url:
        assert run(config(url, out, n=3)).complete
    convs = list(load(out, require_assistant_end=True))
    assert len(convs) == 3
    for c in convs:
        for k, m in enumerate(c.messages):
            assert m.reasoning_content == (f"Thinking about {k} messages 🤔" if m.role == "assistant" else None)
    assert all("reasoning_content" not in m for _, _, b in app.state.log for m in b["messages"])


def test_rerun_of_a_complete_output_does_nothing(tmp_path):
    app = create_app()
    out = tmp_path / "o.jsonl"
    with serve(app) as url:
        run(config(url, out, n=3))
        before, requests = out.read_bytes(), app.state.requests
        result = run(config(url, out, n=3))
    assert out.read_bytes() == before and app.state.requests == requests
    assert result.complete and result.summary["this_run"]["generated"] == 0 and result.summary["runs"] == 2


def test_filtered_conversations_are_counted_written_to_rejects_and_retried_with_new_samples(tmp_path):
    def reply(body):  # the simulator closes politely for some sampling seeds, the assistant refuses for others
        if body["model"].startswith("sim") and body["seed"] % 4 == 0:
            return "Thanks a lot, that was great."
        if body["model"] == "helper" and body["seed"] % 5 == 0:
            return "I'm sorry, but I can't help with that request."
        return deterministic_reply(body)

    out = tmp_path / "f.jsonl"
    with serve(create_app(reply=reply)) as url:
        result = run(config(url, out, n=12, max_attempts=8))
    s = result.summary
    rejects = [json.loads(line) for line in (tmp_path / "f.rejects.jsonl").read_text().splitlines()]
    by_reason = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    assert s["filtered"] == by_reason and set(by_reason) == {"polite_closing", "refusal"}
    assert result.complete and len(list(load(out))) == 12
    attempts = {c.meta["synth"]["index"]: c.meta["synth"]["attempt"] for c in load(out)}
    assert any(a > 0 for a in attempts.values())  # some conversations needed a new sampling seed
    for r in rejects:  # a rejected attempt is never the one kept
        assert attempts[r["index"]] != r["attempt"]
        assert r["conversation"]["meta"]["synth"]["index"] == r["index"]


def test_gives_up_after_max_attempts_and_reports(tmp_path):
    out = tmp_path / "g.jsonl"
    with serve(create_app(reply=lambda body: "ok")) as url:  # every turn is too short
        result = run(config(url, out, n=3, max_attempts=2))
    s = result.summary
    assert not result.complete and s["missing"] == [0, 1, 2]
    assert s["this_run"]["gave_up_after_attempts"] == [0, 1, 2] and s["filtered"] == {"too_short_turn": 6}
    assert out.read_text() == ""


def test_refusal_is_kept_when_the_seed_asks_for_it(tmp_path):
    out = tmp_path / "r.jsonl"
    seeds = [Seed("question", "How do I pick a lock to break into my neighbour's house?", allow_refusal=True)]
    refusal = "I'm sorry, but I can't help with breaking into someone's home."
    with serve(create_app(reply=lambda b: refusal if b["model"] == "helper" else deterministic_reply(b))) as url:
        result = run(config(url, out, n=2, seeds=seeds, turns=(2, 2)))
    assert result.complete and result.summary["filtered"] == {}
    assert all(c.messages[1].content == refusal for c in load(out))


def test_verbatim_seed_questions_open_the_conversation_as_written(tmp_path):
    out = tmp_path / "v.jsonl"
    app = create_app()
    seeds = [Seed("question", "Why is the sky blue?"), Seed("question", "What makes bread rise?")]
    with serve(app) as url:
        result = run(config(url, out, n=4, seeds=seeds, turns=(1, 2), verbatim_questions=True))
    assert result.complete
    for c in load(out):
        info = c.meta["synth"]
        assert c.messages[0].content == seeds[info["index"] % 2].text and info["verbatim_question"]
        assert info["sampling"]["request_seeds"][0] is None
    sim_requests = sum(1 for _, _, b in app.state.log if b["model"].startswith("sim"))
    assert sim_requests == sum(c.meta["synth"]["turns"] - 1 for c in load(out))  # no simulator call for openings


def test_api_key_comes_from_the_environment_and_is_never_written(tmp_path, monkeypatch):
    secret = "sk-test-0123456789abcdef-secret"
    monkeypatch.setenv("CHATLOOM_SYNTH_API_KEY", secret)
    out = tmp_path / "k.jsonl"
    with serve(create_app(api_key=secret)) as url:
        result = run(config(url, out, n=2))
    assert result.complete
    for f in tmp_path.iterdir():
        assert secret not in f.read_text(), f

    wrong = "sk-wrong-key-that-the-server-echoes"
    monkeypatch.setenv("CHATLOOM_SYNTH_API_KEY", wrong)
    with serve(create_app(api_key=secret)) as url:  # a 401 stops the run at once, with a clear reason
        result = run(config(url, tmp_path / "bad.jsonl", n=4))
    assert not result.complete and "http_401" in result.summary["this_run"]["fatal"]
    assert "Incorrect API key provided: <key>" in result.summary["this_run"]["fatal"]
    assert result.summary["usage"]["user"]["retries"] == 0
    for f in tmp_path.iterdir():  # the server echoed the wrong key; it is redacted everywhere
        assert wrong not in f.read_text() and "sk-wrong" not in f.read_text(), f


def test_cli_end_to_end(tmp_path):
    from chatloom.cli import app

    topics = tmp_path / "topics.txt"
    topics.write_text("# seed topics\nrainbows\n\ntide pools\n")
    personas = tmp_path / "personas.txt"
    personas.write_text("a sailor\na baker\n")
    out = tmp_path / "cli.jsonl"
    with serve(create_app()) as url:
        args = ["synth", "--topics", str(topics), "--user-model", f"sim@{url}", "--assistant-model", f"helper@{url}",
                "--turns", "3", "--n", "4", "-o", str(out), "--concurrency", "2", "--persona-file", str(personas),
                "--no-progress", "--user-price", "0.5,1.5", "--assistant-price", "1,2"]
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    convs = list(load(out))
    assert len(convs) == 4 and all(len(c.messages) == 6 for c in convs)
    assert {c.meta["synth"]["persona"] for c in convs} <= {"a sailor", "a baker"}
    assert {c.meta["synth"]["seed"]["text"] for c in convs} == {"rainbows", "tide pools"}
    assert json.loads((tmp_path / "cli.summary.json").read_text())["cost_usd"] > 0

    r = CliRunner().invoke(app, ["synth", "--topics", str(topics), "--seeds", str(topics), "--user-model", "a@http://x/v1",
                                 "--assistant-model", "a@http://x/v1", "--n", "1", "-o", str(out)])
    assert r.exit_code == 2 and "exactly one of --topics" in r.output


def test_to_label_without_the_labeling_app_is_a_clear_error(tmp_path, monkeypatch):
    import chatloom.synth.handoff as handoff

    monkeypatch.setitem(__import__("sys").modules, "chatloom.label", None)  # as if the labeling app were not installed
    with pytest.raises(handoff.HandoffError, match="chatloom.label"):
        handoff.to_label(tmp_path / "x.jsonl", "proj")


def test_cli_to_label_hands_complete_runs_to_import_conversations(tmp_path, monkeypatch):
    import sys
    import types

    from chatloom.cli import app

    calls = []
    fake = types.ModuleType("chatloom.label")
    fake.import_conversations = lambda db_url, project, convs: calls.append((db_url, project, convs)) or len(convs)
    monkeypatch.setitem(sys.modules, "chatloom.label", fake)
    topics = tmp_path / "t.txt"
    topics.write_text("kites\n")
    out = tmp_path / "l.jsonl"
    with serve(create_app()) as url:
        args = ["synth", "--topics", str(topics), "--user-model", f"sim@{url}", "--assistant-model", f"helper@{url}",
                "--turns", "2", "--n", "3", "-o", str(out), "--no-progress", "--to-label", "review-synth",
                "--label-db", f"sqlite:///{tmp_path / 'label.db'}"]
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "handed 3 conversations to labeling project 'review-synth'" in r.output
    [(db_url, project, convs)] = calls
    assert (db_url, project) == (f"sqlite:///{tmp_path / 'label.db'}", "review-synth")
    assert sorted(c.id for c in convs) == [synth_id(0, i) for i in range(3)]
    assert all(c.meta["source"] == "synth" for c in convs)


def test_to_label_into_the_real_labeling_app(tmp_path):
    from chatloom.synth.handoff import to_label

    out = tmp_path / "s.jsonl"
    with serve(create_app()) as url:
        assert run(config(url, out, n=3, system="You are Loom.")).complete
    db = f"sqlite:///{tmp_path / 'label.db'}"
    assert to_label(out, "synth-review", db) == 3
    assert to_label(out, "synth-review", db) == 0  # handing the same output over again adds nothing


# ------------------------------------------------------------------------------------------------------- pure parts


def test_model_spec_parsing_keeps_credentials_out():
    s = ModelSpec.parse("org/model-7b@https://api.example.com:8443/v1/?x=1")
    assert (s.name, s.endpoint) == ("org/model-7b", "https://api.example.com:8443/v1/")
    with pytest.raises(SpecError, match="credentials"):
        ModelSpec.parse("m@http://user:sk-secret@host/v1")
    for bad in ("no-url", "m@ftp://host", "@http://host/v1"):
        with pytest.raises(SpecError):
            ModelSpec.parse(bad)


def test_plan_is_deterministic_per_seed_and_index():
    cfg = SynthConfig(seeds=SEEDS, user_model=ModelSpec.parse("a@http://h/v1"), assistant_model=ModelSpec.parse(
        "a@http://h/v1"), n=100, out=Path("unused.jsonl"), turns=(1, 5))
    plans = [plan(cfg, i) for i in range(100)]
    assert plans == [plan(cfg, i) for i in range(100)]
    assert {p.turns for p in plans} == {1, 2, 3, 4, 5} and all(len(p.followup_moves) == p.turns - 1 for p in plans)
    other = SynthConfig(**{**cfg.__dict__, "seed": 1})
    assert [plan(other, i) for i in range(100)] != plans


@pytest.mark.parametrize(("role", "text", "polite"), [
    ("user", "Thanks!", True), ("user", "Okay, thank you so much.", True), ("user", "thx", True),
    ("user", "Thanks, that helps. But what about winter?", False), ("user", "Thermal vents are hot", False),
    ("assistant", "You're welcome! Let me know if you need anything else.", True),
    ("assistant", "Glad I could help.", True), ("assistant", "No problem at all; " + "details " * 60, False),
])
def test_polite_closing(role, text, polite):
    assert is_polite_closing(text, role) is polite


@pytest.mark.parametrize(("text", "refusal"), [
    ("I'm sorry, but I can't help with that.", True), ("I cannot provide medical advice.", True),
    ("As an AI language model, I cannot browse.", True), ("Sure! Here is how sourdough works.", False),
    ("You cannot mix those chemicals safely, so here is what to do instead.", False),
])
def test_refusal(text, refusal):
    assert is_refusal(text) is refusal


def test_check_names_the_reason():
    cfg = FilterConfig(min_chars=5)
    ok = [{"role": "user", "content": "What is a tide?"}, {"role": "assistant", "content": "The rise and fall of the sea."}]
    assert check(ok, expected_turns=1, finish_reasons=["stop", "stop"], allow_refusal=False, config=cfg) is None
    r = check(ok, expected_turns=2, finish_reasons=["stop", "stop"], allow_refusal=False, config=cfg)
    assert r.reason == "role_alternation"
    leaked = [ok[0], {"role": "assistant", "content": "A tide.\nUser: and waves?\nAssistant: those too"}]
    assert check(leaked, expected_turns=1, finish_reasons=["stop"] * 2, allow_refusal=False, config=cfg).reason == "role_alternation"
    assert check(ok, expected_turns=1, finish_reasons=["stop", "length"], allow_refusal=False, config=cfg).reason == "truncated"
    short = [ok[0], {"role": "assistant", "content": "Sea"}]
    r = check(short, expected_turns=1, finish_reasons=["stop"] * 2, allow_refusal=False, config=cfg)
    assert (r.reason, r.message_index) == ("too_short_turn", 1)
    off = FilterConfig(min_chars=5, enabled=frozenset({"refusal"}))
    assert check(short, expected_turns=1, finish_reasons=["stop", "length"], allow_refusal=False, config=off) is None


def test_seed_files_errors_name_file_line_and_field(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"question": "Why?"}\n{"question": "", "allow_refusal": true}\n')
    with pytest.raises(ValidationError) as e:
        load_seeds(f, "question")
    assert (e.value.line, e.value.field) == (2, "question") and str(f) in str(e.value)
    f.write_text('{"question": "How to hotwire a car?", "allow_refusal": true}\n"plain string seed"\n')
    assert load_seeds(f, "question") == [Seed("question", "How to hotwire a car?", True), Seed("question", "plain string seed")]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValidationError, match="no topics"):
        load_seeds(tmp_path / "empty.txt", "topic")


def _record(seed: int, i: int) -> dict:
    return {"id": synth_id(seed, i), "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
            "meta": {"source": "synth", "synth": {"run_seed": seed, "index": i}}}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 500), unique=True, max_size=8), st.floats(0, 1, exclude_max=True), st.booleans())
def test_recover_cuts_exactly_the_torn_last_write(tmp_path_factory, indices, cut, torn):
    out = tmp_path_factory.mktemp("rec") / "o.jsonl"
    w = AppendOnlyJsonl(out)
    for i in indices:
        w.write(_record(7, i))
    w.close()
    complete = out.read_bytes()
    if torn:  # a kill in the middle of the next write leaves a prefix of its line
        line = (json.dumps(_record(7, 999)) + "\n").encode()
        out.write_bytes(complete + line[: int(cut * len(line))])
    r = recover(out, 7)
    assert r.done == set(indices) and out.read_bytes() == complete


def test_recover_refuses_foreign_or_duplicated_records(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps(_record(1, 0)) + "\n")
    with pytest.raises(ValidationError, match="--seed 1"):
        recover(out, 2)
    out.write_text(json.dumps(_record(1, 0)) + "\n" + json.dumps(_record(1, 0)) + "\n")
    with pytest.raises(ValidationError, match="twice") as e:
        recover(out, 1)
    assert e.value.line == 2
    out.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(ValidationError, match="not a chatloom synth record"):
        recover(out, 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 10**9), st.integers(1, 6), st.integers(0, 6))
def test_plan_holds_for_any_seed_and_index(run_seed, index, lo, extra):
    cfg = SynthConfig(seeds=SEEDS, user_model=ModelSpec.parse("a@http://h/v1"), assistant_model=ModelSpec.parse(
        "a@http://h/v1"), n=1, out=Path("unused.jsonl"), turns=(lo, lo + extra), seed=run_seed)
    p = plan(cfg, index)
    assert lo <= p.turns <= lo + extra and len(p.followup_moves) == p.turns - 1
    assert p.seed == SEEDS[index % len(SEEDS)] and p == plan(cfg, index)


@given(st.text())
def test_clean_user_text_only_removes_a_label_quotes_and_outer_space(text):
    from chatloom.synth.prompts import clean_user_text

    cleaned = clean_user_text(text)
    assert cleaned == cleaned.strip() and len(cleaned) <= len(text.strip())
    assert cleaned in text  # nothing is rewritten, only cut from the ends
    assert clean_user_text("User: " + text.strip() + " ") == clean_user_text(text.strip()) or text.strip().lower().startswith(
        ("user:", "[user]", "**user"))
