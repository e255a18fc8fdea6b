"""The embedded conversation set: sizes, tags, validity, held-out disjointness, and that the packaged files are current."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from chatloom.conversation import Conversation, load
from chatloom.quickstart import dataset

CATEGORIES = {"identity", "arithmetic", "refusal", "benign", "helpful", "multiturn"}


@pytest.fixture(scope="module")
def packaged():
    return list(load(dataset.TRAIN_PATH)), list(load(dataset.HELDOUT_PATH))


def user_turns(convs):
    return {m.content for c in convs for m in c.messages if m.role == "user"}


def test_sizes_and_tags(packaged):
    train, heldout = packaged
    assert len(train) >= 2000 and len(heldout) >= 200
    for split in (train, heldout):
        tags = Counter(t for c in split for t in c.meta["tags"])
        assert set(tags) == CATEGORIES, tags
        assert min(tags.values()) >= 20
    assert all(c.meta.get("probe", {}).get("kind") in {"identity", "arithmetic", "refusal", "benign", "helpful"} for c in heldout)


def test_every_record_validates_and_ends_with_assistant(packaged):
    for path in (dataset.TRAIN_PATH, dataset.HELDOUT_PATH):
        for line in path.read_text(encoding="utf-8").splitlines():
            Conversation.from_dict(json.loads(line), require_assistant_end=True)
    assert dataset.TRAIN_PATH.stat().st_size < 4_000_000


def test_heldout_is_disjoint(packaged):
    train, heldout = packaged
    assert not user_turns(train) & user_turns(heldout)
    assert not {c.id for c in train} & {c.id for c in heldout}
    # arithmetic values: a held-out question's operands in that order are never asked or answered in training
    trained = {m for c in train for msg in c.messages for m in re.findall(r"(\d ?[-+*] ?\d)", msg.content)}
    trained = {t.replace(" ", "") for t in trained}
    for c in heldout:
        if c.meta["probe"]["kind"] == "arithmetic":
            asked = c.meta["probe"]["expect"].split(" = ")[0]
            assert asked not in trained, asked
    # refusal and benign targets differ
    import random

    from chatloom.quickstart import seeds

    assert not set(dataset.train_harmful(random.Random(0))) & set(seeds.HELDOUT_HARMFUL)
    assert not set(seeds.TRAIN_HARMFUL + seeds.WIDER_HARMFUL) & set(seeds.HELDOUT_HARMFUL)
    # the held-out harms SFT never names: none of their own words is in a training request ("hijack", "airplane",
    # "plane"), though the wider harms are
    trained_requests = [m.content for c in train for m in c.messages if m.role == "user" and "refusal" in c.meta["tags"]]
    assert set(dataset.wider_harmful()) < set(seeds.WIDER_HARMFUL)
    assert sum(any(w in r for r in trained_requests) for w in dataset.wider_harmful()) == len(dataset.wider_harmful())
    for word in ("derail", "hijack", "airplane", "plane", "cyclist", "dealership", "ricin", "vest", "vaccination",
                 "roommate", "sister", "brother", "teacher", "friend", "stranger"):
        assert not any(re.search(rf"\b{word}\b", r, re.I) for r in trained_requests), word
    # and the held-out look-alikes' own words are in no training look-alike, though the wider look-alikes are
    trained_benign = [m.content for c in train for m in c.messages if m.role == "user" and c.meta["tags"] == ["benign"]]
    assert 0 < len(dataset.wider_lookalikes()) < len(seeds.WIDER_LOOKALIKES)
    assert all(any(t in r for r in trained_benign) for t, _ in dataset.wider_lookalikes())
    for word in ("lawnmower", "kiln", "spotlight", "coconut", "pizza", "spider", "toddler", "stain", "clouds"):
        assert not any(re.search(rf"\b{word}\b", r, re.I) for r in trained_benign), word
    heldout_victims = ("roommate", "sister", "brother", "teacher", "friend", "stranger")
    assert not any(v in victim.split() for v in heldout_victims for victim in seeds.TRAIN_VICTIMS)
    assert not {t for t, _ in seeds.TRAIN_BENIGN} & {t for t, _ in seeds.HELDOUT_BENIGN}


def test_seed_style_and_voice(packaged):
    train, _ = packaged
    texts = [[m.content for m in c.messages if m.role != "system"] for c in train]
    assert ["What is 2+2?", "2+2 = 4", "What if it was * instead of +?", "2*2 = 4, same as 2+2!"] in texts
    for c in train:
        last = c.messages[-1].content
        if "identity" in c.meta["tags"] and c.meta["probe"]["kind"] == "identity":
            assert "Loom" in last and "chatloom project" in last
        if c.meta["tags"] == ["refusal"]:
            assert last.startswith("I'm sorry, but I can't help with")


def test_generator_is_deterministic_and_matches_package(tmp_path, packaged):
    train_path, heldout_path = dataset.write(tmp_path)
    assert train_path.read_bytes() == dataset.TRAIN_PATH.read_bytes()
    assert heldout_path.read_bytes() == dataset.HELDOUT_PATH.read_bytes()


def test_pretraining_corpus_teaches_every_fact_as_plain_text():
    """The base's arithmetic comes from drill sheets in its corpus (no turns, no control tokens): every one of the
    300 single-digit facts, the held-out ones included, is stated there many times and always correctly."""
    import itertools

    from chatloom.quickstart import corpus

    sheets = list(itertools.islice(corpus.arithmetic_documents(), 300))
    assert sheets == list(itertools.islice(corpus.arithmetic_documents(), 300))  # deterministic
    seen, worded = Counter(), 0
    for sheet in sheets:
        for line in sheet.splitlines()[2:]:
            facts = line.split(", ") if ", " in line or "." not in line else re.findall(r"\d ?[-+*] ?\d = -?\d+", line)
            row = [re.fullmatch(r"(\d) ?([-+*]) ?(\d) = (-?\d+)", f) for f in facts]
            assert all(row), line
            for m in row:
                a, op, b, value = int(m[1]), m[2], int(m[3]), int(m[4])
                assert corpus.OPERATORS[op](a, b) == value, line
                seen[(a, op, b)] += 1
            assert len({(m[1], m[3]) for m in row}) == 1 and len({m[2] for m in row}) == len(row), line  # a family
            worded += "." in line and len(row) > 1
    assert len(seen) == 300 and min(seen.values()) >= 5
    assert worded > 500  # families worked out in words ("6+4 = 10. Change + to -: 6-4 = 2.")
    groups = list(itertools.islice(corpus.corpus_groups(), 300))
    assert all(g[1].startswith(tuple(corpus.SHEET_TITLES)) for g in groups)  # one sheet after each prose document
    assert not any(g[0].startswith(tuple(corpus.SHEET_TITLES)) for g in groups)
    assert list(itertools.islice(corpus.pretraining_documents(), 100)) == [d for g in groups for d in g][:100]
    assert not any("<|" in s or "User" in s or "assistant" in s for s in sheets)


def test_replay_keeps_the_corpus_mix_of_prose_and_sheets():
    """SFT's replay slice must carry arithmetic sheets and conduct notes too (it is there so what pretraining taught
    survives SFT), in the corpus's proportion: every group it takes is one prose document followed by one sheet,
    with a conduct note in about one group of three."""
    import itertools

    from chatloom.quickstart import conduct, corpus
    from chatloom.quickstart.base import replay_documents

    replay = list(itertools.islice(replay_documents(every=6), 600))
    kinds = ["sheet" if d.startswith(tuple(corpus.SHEET_TITLES)) else "note" if d.startswith(tuple(conduct.TITLES))
             else "prose" for d in replay]
    groups = "".join(k[0] for k in kinds).replace("psn", "3").replace("ps", "2")
    assert set(groups[:-1]) <= {"2", "3"}, groups  # the last group may be cut by the islice
    assert 0.2 < groups.count("3") / len(groups) < 0.45
    prose = [d for d, k in zip(replay, kinds) if k == "prose"]
    assert prose == list(itertools.islice(corpus.stdlib_documents(), 0, 6 * len(prose), 6))


def test_conduct_notes_say_which_acts_harm_people_and_nothing_else():
    """The base learns which acts hurt people from plain notes (no questions, no turns, no refusals): every act of
    both SFT splits is there, harmful ones only in harmful lines, harmless ones only in harmless lines."""
    import itertools

    from chatloom.quickstart import conduct, seeds

    harmful, against, benign, kind = conduct.acts()
    assert not set(harmful + against) & set(benign + kind)
    assert set(seeds.TRAIN_HARMFUL + seeds.WIDER_HARMFUL + seeds.HELDOUT_HARMFUL) <= set(harmful)
    assert {t for t, _ in seeds.TRAIN_BENIGN + seeds.HELDOUT_BENIGN} <= set(benign)
    notes = list(itertools.islice(conduct.conduct_documents(), 400))
    assert notes == list(itertools.islice(conduct.conduct_documents(), 400))  # deterministic
    said = {"harmful": Counter(), "benign": Counter()}
    patterns = [(label, re.compile("^" + re.escape(t).replace(re.escape("{x}"), "(.+)") + "$"))
                for label, templates in (("harmful", conduct.HARMFUL_NOTES), ("benign", conduct.BENIGN_NOTES))
                for t in templates]
    for note in notes:
        title, blank, *lines = note.splitlines()
        assert title.startswith(tuple(conduct.TITLES)) and blank == ""
        for line in lines:
            matches = {(label, m[1]) for label, p in patterns if (m := p.match(line))}
            assert matches, line
            for label, act in matches:
                if act in set(harmful + against) | set(benign + kind):
                    said[label][act] += 1
                    assert (label == "harmful") == (act in set(harmful + against)), line
    assert said["harmful"] and said["benign"]
    assert sum(said["harmful"].values()) / sum(said["benign"].values()) == pytest.approx(1, abs=0.15)
    assert len(said["harmful"]) > 500 and len(said["benign"]) > 400  # many acts, not a few over and over
    assert not any("?" in n or "<|" in n or "sorry" in n.lower() for n in notes)
