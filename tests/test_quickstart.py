"""The quickstart pipeline end to end at a tiny size: base pretrained and cached, SFT model dir, report, eval numbers;
the SFT model stops at its end-of-turn token where the base never does; a second run reuses the cached base."""

from __future__ import annotations

import json

import pytest

from chatloom.quickstart import budget


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import os

    from chatloom.quickstart.pipeline import run

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("CHATLOOM_CACHE")
    os.environ["CHATLOOM_CACHE"] = str(cache)
    try:
        yield run(out=tmp_path_factory.mktemp("qs") / "run", tiny=True), cache
    finally:
        if old is None:
            os.environ.pop("CHATLOOM_CACHE")
        else:
            os.environ["CHATLOOM_CACHE"] = old


def test_tiny_quickstart_writes_model_report_and_stops(tiny_run):
    result, cache = tiny_run
    sft = result.sft_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chatloom.json", "generation_config.json", "loss.png"):
        assert (sft / name).is_file(), name
    assert json.loads((sft / "chatloom.json").read_text())["protocol"] == "chatml"
    assert result.base_dir.parent == cache and result.base_dir.name.startswith("base-")
    page = result.report.read_text(encoding="utf-8")
    for piece in ("Before and after", "data:image/png;base64,", "The base continues documents", "answered by both",
                  "one training example", "chatloom chat --model", "chatloom serve --model"):
        assert piece in page, piece
    base, tuned = result.reports
    assert base["label"] == "base" and tuned["label"] == "sft"
    assert tuned["metrics"]["heldout_loss"] < base["metrics"]["heldout_loss"] - 1.0
    assert base["metrics"]["protocol_adherence"] == 0.0
    stopped = [s for s in tuned["samples"] if s["stopped"]]
    assert len(stopped) >= 0.25 * tuned["n"]  # the SFT model has learned to end its turn
    assert json.loads((result.out / "eval.json").read_text())[1]["metrics"] == tuned["metrics"]


def test_engine_stops_sft_model_at_end_of_turn(tiny_run):
    from chatloom.conversation import Conversation, Message
    from chatloom.engine import Engine, SamplingParams

    result, _ = tiny_run
    engine = Engine.from_pretrained(result.sft_dir)
    prompts = [Conversation([Message("user", q)]) for q in ("What is your name?", "Who made you?", "What is 2+2?", "Hi!")]
    done = engine.generate(prompts, SamplingParams(max_tokens=24, temperature=0))
    eot = engine.protocol.end_of_turn_id
    assert any(c.finish_reason == "stop" and c.ids[-1] == eot for c in done), [c.text for c in done]


def test_second_run_reuses_cached_base(tiny_run, tmp_path):
    from chatloom.quickstart.base import ensure_base

    result, _ = tiny_run
    again, reused = ensure_base("tiny", 8, seq_len=128, batch_size=8, tag="tiny", corpus_chars=200_000, log=lambda *_: None)
    assert reused and again == result.base_dir


def test_budget_plan_fits_the_time():
    for seconds, step, sft_step in ((600, 2.0, None), (600, 1.0, 0.4), (700, 0.8, 0.3)):
        p = budget.plan(seconds, step, sft_step)
        spent = (p.pretrain_steps * step * budget.PRETRAIN_SLOWDOWN
                 + p.sft_steps * (sft_step or step) * budget.SFT_SLOWDOWN)  # what the real steps will take
        assert seconds * 0.95 <= spent <= seconds, (p, spent)
        assert p.pretrain_steps * step * budget.PRETRAIN_SLOWDOWN >= 0.5 * seconds  # the base gets the larger share
        assert p.pretrain_seconds >= 0.5 * seconds and p.pretrain_seconds + p.sft_seconds == pytest.approx(seconds)
    cheap = budget.plan(600, 1.0, 0.4)
    assert cheap.sft_steps > cheap.pretrain_steps  # cheaper SFT steps buy more of them
    slow = budget.plan(60, 10.0)
    assert slow.pretrain_steps == slow.sft_steps == 20  # never below the minimum
    fast = budget.plan(600, 0.01)
    assert (fast.pretrain_steps, fast.sft_steps) == (1000, 1500)  # capped...
    assert fast.pretrain_seconds == pytest.approx(1000 * 0.01 * budget.PRETRAIN_SLOWDOWN)  # ...and SFT may have the rest
    assert budget.training_seconds(15) < 15 * 60 - budget.RESERVE_SECONDS
    assert budget.training_seconds(1) == 0.0


def test_bring_your_own_base(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatloom.quickstart.base import bring_base
    from chatloom.tokenizers import load_tokenizer
    from chatloom.train.models import BUNDLED_TOKENIZER

    tok = load_tokenizer(BUNDLED_TOKENIZER)  # a plain HF model dir: no chatloom.json, no control tokens yet
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=64)).save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")
    out = bring_base(str(tmp_path / "hf"), tmp_path / "base")
    meta = json.loads((out / "chatloom.json").read_text())
    assert meta["protocol"] == "chatml" and meta["base_model"] == str(tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tok) + 2  # <|im_start|>, <|im_end|> added
