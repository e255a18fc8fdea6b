"""chatloom.evals: probe scoring on crafted replies, adherence on crafted ids, loss/generation mechanics on a tiny
random model, the side-by-side report and the `chatloom eval` command."""

from __future__ import annotations

import json
import math

import pytest

from chatloom.conversation import Conversation, load
from chatloom.evals import acceptance, evaluate, probes, to_html
from chatloom.quickstart.dataset import HELDOUT_PATH


def test_refusal_detection():
    assert probes.is_refusal("I'm sorry, but I can't help with that. It could seriously hurt someone.")
    assert probes.is_refusal("I cannot help with that request.")
    assert probes.is_refusal("Sorry \u2014 I can\u2019t help with this.")
    assert not probes.is_refusal("Find its id with ps, then run kill <pid>.")
    assert not probes.is_refusal("I can help with that: run kill <pid>.")


def test_identity_and_arithmetic_scoring():
    assert probes.identity_ok("I'm Loom, an assistant made by the chatloom project.")
    assert not probes.identity_ok("I'm an assistant made by the chatloom project.")  # "loom" inside chatloom is not the name
    assert not probes.identity_ok("I'm Loom.")
    assert probes.arithmetic_ok("3+4 = 7", "3+4 = 7")
    assert probes.arithmetic_ok("3 + 4 = 7, while 3*4 = 12.", "3+4 = 7")
    assert not probes.arithmetic_ok("3+4 = 71", "3+4 = 7")
    assert not probes.arithmetic_ok("7", "3+4 = 7")
    assert not probes.arithmetic_ok("4+3 = 7", "3+4 = 7")
    assert probes.score({"kind": "benign"}, "Use docker rm.") is True
    assert probes.score({"kind": "benign"}, "I'm sorry, but I can't help with that.") is False
    assert probes.score({"kind": "refusal"}, "Sure! Step one...") is False
    assert probes.score({"kind": "helpful", "expect": None}, "anything") is None


def test_adherence_on_crafted_ids():
    eot, controls = 9, {8, 9}
    ok = probes.adherence([1, 2, 9], "stop", eot, controls, "hi", ("<|im_start|>",))
    assert ok == {"stopped": True, "leaked": False, "ok": True}
    assert probes.adherence([1, 2, 3], "length", eot, controls, "hi", ())["ok"] is False
    leak = probes.adherence([1, 8, 2, 9], "stop", eot, controls, "hi", ())
    assert leak["stopped"] and leak["leaked"] and not leak["ok"]
    spelled = probes.adherence([1, 2, 9], "stop", eot, controls, "ok<|im_start|>user", ("<|im_start|>",))
    assert spelled["leaked"]
    assert probes.adherence([1, 2, 5], "stop", eot, controls, "hi", ())["stopped"] is False  # EOS is not end of turn


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from chatloom.train import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("tiny") / "m", protocol="chatml", config="tiny", seed=0)


@pytest.fixture(scope="module")
def few():
    convs = list(load(HELDOUT_PATH))
    by_kind = {}
    for c in convs:
        by_kind.setdefault(c.meta["probe"]["kind"], []).append(c)
    return [c for v in by_kind.values() for c in v[:3]]


def test_evaluate_tiny_random_model(tiny_dir, few):
    report = evaluate(tiny_dir, few, max_tokens=8, progress=False, label="tiny")
    m = report["metrics"]
    assert report["n"] == len(few) == len(report["samples"])
    assert math.isfinite(m["heldout_loss"]) and m["heldout_loss"] > 5  # random weights over an ~8k vocabulary
    assert 0 <= m["protocol_adherence"] <= 1
    for key in ("identity_accuracy", "arithmetic_exact_match", "refusal_rate", "false_refusal_rate"):
        assert m[key] is not None and 0 <= m[key] <= 1
    assert all(s["completion_tokens"] <= 8 for s in report["samples"])
    # adherence is recomputed consistently from the samples
    assert m["protocol_adherence"] == sum(s["ok"] for s in report["samples"]) / report["n"]
    assert set(acceptance(report)) == {"protocol_adherence", "identity_accuracy", "arithmetic_exact_match", "refusal_rate",
                                       "false_refusal_rate"}
    page = to_html([report, report])
    assert page.count("<th>tiny</th>") == 4 and "held-out loss" in page


def test_supervised_loss_counts_exactly_the_mask(tiny_dir):
    from chatloom.evals.generate import load_engine
    from chatloom.evals.loss import supervised_loss

    engine = load_engine(tiny_dir)
    convs = [Conversation.of("What is 2+2?", "2+2 = 4"), Conversation.of("hi", "Hello! I'm Loom.")]
    out = supervised_loss(engine.model, engine.protocol, convs, batch_size=1)
    assert out["tokens"] == sum(r.num_supervised for r in engine.protocol.render_batch(convs))
    batched = supervised_loss(engine.model, engine.protocol, convs, batch_size=2)  # padding must not change the loss
    assert batched["tokens"] == out["tokens"] and abs(batched["loss"] - out["loss"]) < 1e-4


def test_eval_cli_compare(tiny_dir, few, tmp_path):
    from typer.testing import CliRunner

    from chatloom.cli import app
    from chatloom.conversation import save

    data = tmp_path / "few.jsonl"
    save(few[:4], data)
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_dir), "--data", str(data), "--compare", str(tiny_dir),
                                   "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"), "--max-tokens", "4"])
    assert res.exit_code == 0, res.output
    reports = json.loads((tmp_path / "r.json").read_text())
    assert len(reports) == 2 and reports[0]["metrics"] == reports[1]["metrics"]
    assert "Side by side" in (tmp_path / "r.html").read_text()
    bad = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--data", str(data)])
    assert bad.exit_code == 2 and "nope" in bad.output
