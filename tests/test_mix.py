"""Mixtures step by step: the same recipe and seed give the same rows (pinned before `build_mixture` was split into
named steps) and byte-identical shards; deduplication removes only duplicates of rows that are actually kept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

from chatloom import Conversation, load, save
from chatloom.conversation import from_parquet_row
from chatloom.data import build_mixture


def conv(q: str, a: str, **meta) -> Conversation:
    return Conversation.of(q, a, meta={"lang": "en", **meta})


def source(path: Path, prefix: str, n: int, **meta) -> list[Conversation]:
    rows = [conv(f"{prefix} question number {i}: please explain topic {i * 7} in detail",
                 f"{prefix} answer {i}: topic {i * 7} is explained here with care.", **meta) for i in range(n)]
    save(rows, path)
    return rows


def rows_of(out: Path) -> list[dict]:
    """Every shard's rows in file order, as plain dicts (independent of pyarrow's file bytes). A message's
    `reasoning_content` column, added after the pin and null on these rows, is left out: an all-null new column is
    not a change of the rows."""
    rows = [{"shard": p.name, **r} for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    for row in rows:
        for m in row["messages"]:
            if m.get("reasoning_content", "") is None:
                del m["reasoning_content"]
    return rows


def digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


KITES_Q = "Why do kites fly so well on a windy afternoon at the beach?"
KITES_A = ("Kites fly because the wind pushes against the sail at an angle, which makes lift; the line holds the kite so "
           "the wind cannot simply carry it away, and the tail keeps the nose pointing into the wind so the kite stays "
           "stable while the flyer lets out more line to climb higher and higher.")


def pinned_recipe(tmp_path: Path) -> Path:
    """Three sources (fraction, count, epochs), global and per-source filters, exact and near dedupe of rows that are
    kept, decontamination and a validation split: every step of the pipeline has work to do."""
    a = source(tmp_path / "a.jsonl", "alpha", 120, license="CC-BY-4.0")
    save([*a, conv(KITES_Q, KITES_A)], tmp_path / "a.jsonl")
    source(tmp_path / "b.jsonl", "beta", 60)
    save([*a[:5], conv(KITES_Q.replace("afternoon", "morning"), KITES_A.replace("higher and higher", "ever higher")),
          conv("gamma unique question about sailing boats and wind", "gamma unique answer about sails."),
          conv("too short", "x"), Conversation.from_dict({"messages": [{"role": "user", "content": "no reply"}]})],
         tmp_path / "c.jsonl")
    save([conv("alpha question number 9: please explain topic 63 in detail", "x")], tmp_path / "eval.jsonl")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "seed: 7\nprotocol: chatml\nfilters: {min_tokens: 10}\ndedupe: {exact: true, near: {threshold: 0.7}}\n"
        "decontaminate: {files: [eval.jsonl], n: 8}\nsplit: {validation: 0.2}\nshard_rows: 25\n"
        "sources:\n  - {name: a, path: a.jsonl, fraction: 1.0}\n  - {name: b, path: b.jsonl, count: 30}\n"
        "  - {name: c, path: c.jsonl, epochs: 2.5, filters: {max_turns: 4}}\n")
    return recipe


#: Rows and ledger of `pinned_recipe` as written by build_mixture before it was split into steps.
PINNED_ROWS = "36490e6cb148058055df93456b05623eecda444f68c80a4888fe701ffded76d2"
PINNED_SOURCES = json.dumps([
    {"dropped": {"contaminated": 1}, "licenses": {"(unstated)": 1, "CC-BY-4.0": 119}, "name": "a", "rows_in": 121,
     "rows_out": 120, "supervised_tokens_out": 2324, "tokens_out": 5673},
    {"dropped": {"contaminated": 1, "sampled_out": 29}, "licenses": {"(unstated)": 30}, "name": "b", "rows_in": 60,
     "rows_out": 30, "supervised_tokens_out": 588, "tokens_out": 1446},
    {"dropped": {"exact_duplicate": 5, "near_duplicate": 1, "too_few_tokens": 1}, "licenses": {"(unstated)": 6},
     "name": "c", "rows_in": 9, "rows_out": 6, "supervised_tokens_out": 45, "tokens_out": 168}], sort_keys=True)


def test_pinned_recipe_gives_the_pinned_rows(tmp_path):
    ledger = build_mixture(pinned_recipe(tmp_path), tmp_path / "out", progress=False)
    rows = rows_of(tmp_path / "out")
    sources = [{k: s[k] for k in ("name", "rows_in", "rows_out", "tokens_out", "supervised_tokens_out", "dropped",
                                  "licenses")} for s in ledger["sources"]]
    assert len(rows) == ledger["rows"]["train"] + ledger["rows"]["validation"]
    assert (digest(rows), json.dumps(sources, sort_keys=True)) == (PINNED_ROWS, PINNED_SOURCES)


def test_same_recipe_and_seed_give_byte_identical_shards(tmp_path):
    recipe = pinned_recipe(tmp_path)
    build_mixture(recipe, tmp_path / "m1", progress=False)
    build_mixture(recipe, tmp_path / "m2", progress=False)
    names = sorted(p.name for p in (tmp_path / "m1").glob("*.parquet"))
    assert len(names) > 2 and names == sorted(p.name for p in (tmp_path / "m2").glob("*.parquet"))
    for name in names:
        assert (tmp_path / "m1" / name).read_bytes() == (tmp_path / "m2" / name).read_bytes()


def mix(tmp_path: Path, sources: str, seed: int = 0, extra: str = "") -> tuple[dict, list[Conversation]]:
    recipe = tmp_path / f"recipe-{seed}.yaml"
    recipe.write_text(f"seed: {seed}\nprotocol: chatml\n{extra}sources:\n{sources}")
    out = tmp_path / f"out-{seed}"
    ledger = build_mixture(recipe, out, progress=False)
    return ledger, [Conversation.from_dict(from_parquet_row(r)) for r in rows_of(out)]


def test_a_row_sampled_out_of_one_source_does_not_remove_its_twin_in_another(tmp_path):
    """The bug this split fixed: dedupe used to mark rows as seen before sampling, so a row sampled out of A still
    removed its duplicate in B and both copies were lost. Now every conversation survives exactly once."""
    a = source(tmp_path / "a.jsonl", "alpha", 40)
    save([*a, *source(tmp_path / "only_b.jsonl", "beta", 10)], tmp_path / "b.jsonl")
    for seed in range(3):
        ledger, rows = mix(tmp_path, "  - {name: a, path: a.jsonl, fraction: 0.5}\n  - {name: b, path: b.jsonl}\n", seed)
        la, lb = ledger["sources"]
        assert 5 < la["rows_out"] < 35 and la["dropped"] == {"sampled_out": 40 - la["rows_out"]}
        assert sorted(r.id for r in rows) == sorted(c.id for c in load(tmp_path / "b.jsonl"))  # each exactly once
        assert lb["dropped"] == {"exact_duplicate": la["rows_out"]} and lb["rows_out"] == 50 - la["rows_out"]


def test_near_duplicates_of_sampled_out_rows_are_kept(tmp_path):
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.sample(words, 40)) for _ in range(12)]  # pairwise far apart
    save([conv(f"question {i}", t) for i, t in enumerate(texts)], tmp_path / "a.jsonl")
    save([conv(f"question {i}", t + " extra") for i, t in enumerate(texts)], tmp_path / "b.jsonl")  # near twins
    ledger, rows = mix(tmp_path, "  - {name: a, path: a.jsonl, fraction: 0.5}\n  - {name: b, path: b.jsonl}\n",
                       extra="dedupe: {exact: true, near: {threshold: 0.7}}\n")
    la, lb = ledger["sources"]
    assert 0 < la["rows_out"] < 12 and lb["dropped"] == {"near_duplicate": la["rows_out"]}
    assert lb["rows_out"] == 12 - la["rows_out"]  # every row sampled out of a is back from b, each question once
    assert sorted(r.messages[0].content for r in rows) == sorted(f"question {i}" for i in range(12))


def test_count_samples_before_dedupe_and_the_ledger_says_what_dedupe_removed(tmp_path):
    from chatloom.data.mix import seeded_unit

    a = source(tmp_path / "a.jsonl", "alpha", 10)
    extra = source(tmp_path / "extra.jsonl", "gamma", 10)
    b = [*a, *extra]
    save(b, tmp_path / "b.jsonl")
    seed = 5
    chosen = sorted(b, key=lambda c: seeded_unit(seed, "keep", c.id))[:6]  # the count's seeded choice, by definition
    twins = sum(1 for c in chosen if c in a)
    assert 0 < twins < 6, "pick a seed whose choice mixes twins and new rows"
    ledger, rows = mix(tmp_path, "  - {name: a, path: a.jsonl}\n  - {name: b, path: b.jsonl, count: 6}\n", seed)
    lb = ledger["sources"][1]
    assert lb["dropped"] == {"sampled_out": 14, "exact_duplicate": twins} and lb["rows_out"] == 6 - twins
    assert sorted(r.id for r in rows) == sorted({c.id for c in [*a, *chosen]})
    page = (tmp_path / f"out-{seed}" / "report.html").read_text(encoding="utf-8")
    assert f"exact_duplicate: {twins}" in page


def test_every_row_of_a_source_is_accounted_for(tmp_path):
    """rows in = rows kept + rows dropped (by reason), also for epochs below 1 (a row given no copy is sampled out)."""
    source(tmp_path / "a.jsonl", "alpha", 30)
    ledger, rows = mix(tmp_path, "  - {name: a, path: a.jsonl, epochs: 0.5}\n  - {name: b, path: a.jsonl, count: 7}\n")
    la, lb = ledger["sources"]
    assert la["rows_in"] == la["rows_out"] + sum(la["dropped"].values()) == 30 and 5 < la["rows_out"] < 25
    assert lb["rows_in"] == lb["rows_out"] + sum(lb["dropped"].values()) == 30
    assert len(rows) == len({r.id for r in rows}) == la["rows_out"] + lb["rows_out"]
