"""Data: importers on the real fixture files, OASST thread selection, bad input, and mixtures (determinism, weights,
dedupe, decontamination, ledger and report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatloom import Conversation, ValidationError, load, save
from chatloom.cli import app
from chatloom.data import convert, threads

from .conftest import FIXTURES, need

CONV = FIXTURES / "conversations"
runner = CliRunner()


def imported(fmt, *paths, **kw):
    out = []
    for p in paths:
        out += list(convert(fmt, Path(p), **kw))
    return out


def test_oasst_tree_best_path_follows_rank_zero():
    path = need(CONV / "oasst" / "en_100_tree.jsonl")
    convs = imported("oasst", path)
    trees = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(convs) > 50
    # by hand on the first tree whose root is human-written: the best thread takes the rank-0 reply at each branch
    for tree in trees:
        root = tree["prompt"]
        if root.get("synthetic"):
            continue
        kids = [r for r in root["replies"] if not r.get("synthetic") and not r.get("deleted")]
        if len(kids) < 2:
            continue
        best = min(kids, key=lambda r: r.get("rank", 99))
        conv = next(c for c in convs if c.meta["oasst"]["tree_id"] == tree["message_tree_id"])
        assert conv.messages[0].content == root["text"] and conv.messages[1].content == best["text"]
        assert best.get("rank") == 0 and conv.messages[-1].role == "assistant"
        break
    else:
        pytest.fail("no suitable tree in the fixture")
    assert all(c.meta["source"] == "oasst:en_100_tree.jsonl" and c.meta["original_id"] for c in convs)
    everything = imported("oasst", path, threads_mode="all")
    top2 = imported("oasst", path, threads_mode="top-k:2")
    assert len(convs) <= len(top2) <= len(everything)
    # the fixture's first tree is all synthetic: left out by default, kept on request
    first = trees[0]["message_tree_id"]
    assert not any(c.meta["oasst"]["tree_id"] == first for c in convs)
    assert any(c.meta["oasst"]["tree_id"] == first for c in imported("oasst", path, keep_synthetic=True))


def test_oasst_deleted_rejected_and_flat_table(tmp_path):
    def msg(mid, parent, role, text, **kw):
        return {"message_id": mid, "parent_id": parent, "message_tree_id": "t1", "role": role, "text": text,
                "lang": "en", "deleted": False, "synthetic": False, "review_result": True, **kw}
    rows = [msg("a", None, "prompter", "Root question?"),
            msg("b", "a", "assistant", "Deleted best", rank=0, deleted=True),
            msg("c", "a", "assistant", "Second answer", rank=1),
            msg("d", "a", "assistant", "Rejected answer", rank=2, review_result=False),
            msg("e", "c", "prompter", "A follow-up without reply")]
    flat = tmp_path / "flat.jsonl"
    flat.write_text("\n".join(json.dumps(r) for r in rows))
    convs = imported("oasst", flat, threads_mode="all")
    assert [[m.content for m in c.messages] for c in convs] == [["Root question?", "Second answer"]]
    kept = imported("oasst", flat, threads_mode="all", keep_rejected=True)
    assert len(kept) == 2
    root = {**rows[0], "replies": [{**r, "replies": []} for r in rows[1:4]]}
    nested = tmp_path / "nested.jsonl"
    nested.write_text(json.dumps(root))
    assert [c.messages[1].content for c in imported("oasst", nested)] == ["Second answer"]


def test_sharegpt_alpaca_and_seed_tasks():
    sg = imported("sharegpt", need(CONV / "sharegpt" / "fastchat_dummy_conversation.json"))
    assert len(sg) == 500 and sg[0].meta["original_id"] == "identity_0" and sg[0].messages[0].content == "Who are you?"
    al = imported("alpaca", need(CONV / "alpaca_selfinstruct" / "axolotl_alpaca.json"))
    assert al and all(len(c.messages) == 2 for c in al)
    seeds_path = need(CONV / "alpaca_selfinstruct" / "stanford_alpaca_seed_tasks.jsonl")
    seeds = imported("alpaca", seeds_path)
    first = json.loads(seeds_path.read_text().splitlines()[0])
    assert seeds[0].messages[0].content.startswith(first["instruction"])
    assert seeds[0].messages[1].content == first["instances"][0]["output"]
    assert seeds[0].meta["original_id"] == "seed_task_0#0"


def test_ultrachat_hh_and_parquet(tmp_path):
    uc = tmp_path / "uc.jsonl"
    uc.write_text(json.dumps({"id": "7", "data": ["How do kites fly?", "Lift from the wind.", "And in rain?", "Poorly."]}))
    [c] = imported("ultrachat", uc)
    assert [m.role for m in c.messages] == ["user", "assistant", "user", "assistant"] and c.meta["original_id"] == "7"
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Bye\n\nAssistant: Bye!"}))
    [h] = imported("hh", hh)
    assert [m.content for m in h.messages] == ["Hi there", "Hello! How can I help?", "Bye", "Bye!"]
    pq = tmp_path / "c.parquet"
    save([c, h], pq)
    assert [x.messages for x in imported("parquet", pq)] == [c.messages, h.messages]


def test_reimport_gives_the_same_ids():
    path = need(CONV / "sharegpt" / "fastchat_dummy_conversation.json")
    assert [c.id for c in imported("sharegpt", path)] == [c.id for c in imported("sharegpt", path)]


def test_bad_input_names_file_line_field_or_is_counted(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}),
        '{"conversations": [{"from": "human", "value": "trunc',
        json.dumps({"conversations": [{"from": "robot", "value": "x"}]}),
        json.dumps({"conversations": [{"from": "human", "value": 3}]}),
        json.dumps({"conversations": [{"from": "human", "value": "   "}]}),
    ]))
    with pytest.raises(ValidationError) as e:
        imported("sharegpt", bad)
    assert f"{bad}:2" in str(e.value) and "not valid JSON" in str(e.value)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["data", "import", "--from", "sharegpt", str(bad), "-o", str(out), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 1 and summary["rejected"] == 4
    rejects = [json.loads(x) for x in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(2, "(line)"), (3, "conversations[0].from"),
                                                          (4, "conversations[0].value"), (5, "messages[0].content")]
    result = runner.invoke(app, ["data", "validate", str(out), str(bad)])
    assert result.exit_code == 1 and f"{bad}:2" in result.stdout


def test_stats_and_show(tmp_path):
    path = tmp_path / "c.jsonl"
    save([Conversation.of("What is 2+2?", "2+2 = 4", meta={"lang": "en", "tags": ["math"], "source": "s", "license": "MIT"}),
          Conversation.of("Hi", "Hello", "Bye", "Bye!")], path)
    result = runner.invoke(app, ["data", "stats", str(path), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["rows"] == 2 and s["messages_per_role"] == {"user": 3, "assistant": 3} and s["tags"] == {"math": 1}
    assert s["tokens"] == sum(s["tokens_per_role"].values()) and s["supervised_tokens"] > 0
    shown = runner.invoke(app, ["data", "show", str(path), "--n", "1"])
    assert shown.exit_code == 0 and "2+2 = 4" in shown.stdout and "Bye!" not in shown.stdout


def _source(path: Path, prefix: str, n: int, start: int = 0):
    save([Conversation.of(f"{prefix} question number {i}: please explain topic {i * 7} in detail",
                          f"{prefix} answer {i}: topic {i * 7} is explained here with care.", meta={"lang": "en"})
          for i in range(start, start + n)], path)


def test_mixture_is_deterministic_weighted_deduplicated_and_decontaminated(tmp_path):
    _source(tmp_path / "a.jsonl", "alpha", 200)
    long_answer = ("Kites fly because the wind pushes against the sail at an angle, which makes lift; the line holds "
                   "the kite so the wind cannot simply carry it away, and the tail keeps the nose pointing into the "
                   "wind so the kite stays stable while the flyer lets out more line to climb higher and higher.")
    original = Conversation.of("Why do kites fly so well on a windy afternoon at the beach?", long_answer,
                               meta={"lang": "en"})
    save([*load(tmp_path / "a.jsonl"), original], tmp_path / "a.jsonl")
    _source(tmp_path / "b.jsonl", "beta", 100)
    near = Conversation.of("Why do kites fly so well on a windy morning at the beach?",
                           long_answer.replace("higher and higher", "ever higher"), meta={"lang": "en"})
    exact = Conversation.of("beta question number 3: please explain topic 21 in detail",
                            "beta answer 3: topic 21 is explained here with care.", meta={"lang": "en"})
    save([near, exact, Conversation.of("gamma unique question about sailing boats and wind",
                                       "gamma unique answer about sails.")], tmp_path / "c.jsonl")
    evals = tmp_path / "eval.jsonl"
    save([Conversation.of("alpha question number 9: please explain topic 63 in detail", "x")], evals)
    (tmp_path / "recipe.yaml").write_text(
        "seed: 3\nprotocol: chatml\ndedupe: {exact: true, near: {threshold: 0.7}}\n"
        "decontaminate: {files: [eval.jsonl], n: 8}\nsplit: {validation: 0.1}\n"
        "sources:\n  - {name: a, path: a.jsonl, fraction: 0.5}\n  - {name: b, path: b.jsonl, count: 40}\n"
        "  - {name: c, path: c.jsonl, epochs: 2}\n")
    for out in ("m1", "m2"):
        result = runner.invoke(app, ["data", "mix", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / out), "--no-progress"])
        assert result.exit_code == 0, result.output
    shards = sorted(p.name for p in (tmp_path / "m1").glob("*.parquet"))
    assert shards == ["train-00000.parquet", "validation-00000.parquet"]
    for name in shards:
        assert (tmp_path / "m1" / name).read_bytes() == (tmp_path / "m2" / name).read_bytes()
    ledger = json.loads((tmp_path / "m1" / "mixture.json").read_text())
    a, b, c = ledger["sources"]
    assert a["dropped"].get("contaminated") == 1
    assert 70 <= a["rows_out"] <= 135  # a seeded half of ~200
    assert b["rows_out"] == 40
    rows = list(load(tmp_path / "m1"))
    # c's exact twin of b's row 3 is dropped only if b's count kept that row; otherwise c keeps it (x 2 epochs)
    twins = sum(1 for r in rows if r.id == exact.id)
    assert (twins, c["dropped"]) in [(1, {"near_duplicate": 1, "exact_duplicate": 1}), (2, {"near_duplicate": 1})]
    assert c["rows_out"] == 2 * (1 + (twins == 2))  # gamma (and the twin) x 2 epochs
    assert len(rows) == ledger["rows"]["train"] + ledger["rows"]["validation"] == sum(x["rows_out"] for x in (a, b, c))
    texts = [m.content for conv in load(tmp_path / "m1" / "train-00000.parquet") for m in conv.messages]
    assert not any("topic 63 in detail" in t for t in texts)
    page = (tmp_path / "m1" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and ledger["recipe_hash"] in page


def test_recipe_errors(tmp_path):
    (tmp_path / "r.yaml").write_text("sources: []\n")
    result = runner.invoke(app, ["data", "mix", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "sources" in result.output
    (tmp_path / "r.yaml").write_text("sources:\n  - {path: a.jsonl, fraction: 0.5, count: 3}\n")
    result = runner.invoke(app, ["data", "mix", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "one of fraction, count, epochs" in result.output


def test_thread_modes_on_a_small_tree():
    def m(mid, role, rank=None, replies=()):
        return {"message_id": mid, "role": role, "text": mid, "rank": rank, "replies": list(replies)}
    root = m("q", "prompter", replies=[m("a0", "assistant", 0, [m("f", "prompter", None, [m("a00", "assistant", 0)])]),
                                      m("a1", "assistant", 1), m("a2", "assistant", 2)])
    assert [[x["message_id"] for x in p] for p in threads(root, "best")] == [["q", "a0", "f", "a00"]]
    assert len(threads(root, "top-k:2")) == 2 and len(threads(root, "all")) == 3
    with pytest.raises(ValueError):
        threads(root, "worst")
