"""The quickstart's held-out probes are big enough to decide: every bar counts at least 60 probes on at least 30
distinct targets, none of which (and no held-out phrasing, after whitespace/case normalisation) occurs in training."""

from __future__ import annotations

from collections import defaultdict

import pytest

from chatloom.conversation import load
from chatloom.evals.imitation import normalise_prompt
from chatloom.quickstart import dataset

BARS = {"identity": "identity_accuracy", "arithmetic": "arithmetic_exact_match", "refusal": "refusal_rate",
        "benign": "false_refusal_rate"}


@pytest.fixture(scope="module")
def splits():
    return list(load(dataset.TRAIN_PATH)), list(load(dataset.HELDOUT_PATH))


def test_every_bar_has_60_probes_on_30_targets(splits):
    _, heldout = splits
    probes, targets = defaultdict(int), defaultdict(set)
    for c in heldout:
        p = c.meta["probe"]
        if p["kind"] not in BARS:
            continue
        probes[p["kind"]] += 1
        targets[p["kind"]].add(p["expect"] if p["kind"] == "arithmetic" else p["target"])
    for kind in BARS:
        assert probes[kind] >= 60, (kind, probes[kind])
        assert len(targets[kind]) >= 30, (kind, len(targets[kind]))
        # no target carries more than a few probes: one target moves a bar by at most ~5 points
        per_target = defaultdict(int)
        for c in heldout:
            p = c.meta["probe"]
            if p["kind"] == kind:
                per_target[p["expect"] if kind == "arithmetic" else p["target"]] += 1
        assert max(per_target.values()) / probes[kind] <= 0.05, kind


def test_targets_and_phrasings_never_in_training(splits):
    train, heldout = splits
    train_users = [m.content for c in train for m in c.messages if m.role == "user"]
    normalised = {normalise_prompt(u) for u in train_users}
    joined = "\n".join(u.lower() for u in train_users)
    for c in heldout:
        last = [m.content for m in c.messages if m.role == "user"][-1]
        assert normalise_prompt(last) not in normalised, last
        p = c.meta["probe"]
        if p["kind"] in ("refusal", "benign"):
            assert p["target"].lower() not in joined, p["target"]  # the request itself is new, in any frame
        if p["kind"] == "identity":
            assert normalise_prompt(p["target"]) not in normalised, p["target"]


def test_heldout_records_name_their_target_and_training_records_do_not(splits):
    train, heldout = splits
    assert all("target" in c.meta["probe"] for c in heldout if c.meta["probe"]["kind"] in ("identity", "refusal", "benign"))
    assert not any("target" in c.meta.get("probe", {}) for c in train)
