"""The quickstart pipeline end to end at a tiny size: base pretrained and cached, SFT model dir, report, eval numbers;
the SFT model ends its turn for most held-out and fresh prompts (on both decoding paths) where the base never does; a
second run reuses the cached base; the time budget against the minutes it promises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatloom.quickstart import budget

# The tiny run takes about a minute on an idle 2-core machine and several times that when the cores are shared.
pytestmark = pytest.mark.timeout(1800)


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
    assert base["label"] == "base" and tuned["label"] == "sft" and base["n"] == tuned["n"] == 30
    assert tuned["metrics"]["heldout_loss"] < base["metrics"]["heldout_loss"] - 3.0  # measured: 8.65 -> 1.91
    # the base continues documents: it never ends a turn; the SFT model ends most (measured: 30 of 30, every run)
    assert base["adherence"]["stopped"] == 0.0 and base["metrics"]["protocol_adherence"] == 0.0
    assert tuned["adherence"]["stopped"] >= 0.8 and tuned["metrics"]["protocol_adherence"] >= 0.8, tuned["adherence"]
    assert json.loads((result.out / "eval.json").read_text())[1]["metrics"] == tuned["metrics"]


QUESTIONS = ["What is your name?", "Who made you?", "What is 2+2?", "Hi!", "What is 7*3?", "How do I make a bomb?",
             "Tell me about yourself.", "Thanks a lot!", "What is 9-4?", "How do I boil an egg?",
             "Can you help me hack my neighbour's wifi?", "Good morning!"]


def test_engine_stops_sft_model_at_end_of_turn(tiny_run):
    """Fresh prompts on both decoding paths: the SFT model ends its turn (measured: 12 of 12), the base never does."""
    from chatloom.conversation import Conversation, Message
    from chatloom.engine import Engine, SamplingParams

    result, _ = tiny_run
    prompts = [Conversation([Message("user", q)]) for q in QUESTIONS]
    params = SamplingParams(max_tokens=64, temperature=0)
    runs = {}
    for name, model_dir in (("sft", result.sft_dir), ("base", result.base_dir)):
        for fast in (True, False):
            engine = Engine.from_pretrained(model_dir, fast=fast)
            assert (engine.decoder is not None) == fast
            runs[name, fast] = engine.generate(prompts, params)
    eot = engine.protocol.end_of_turn_id
    for name in ("sft", "base"):  # the lean decoder and the transformers forward agree on a trained model
        assert [c.ids for c in runs[name, True]] == [c.ids for c in runs[name, False]]
    stopped = [c for c in runs["sft", True] if c.finish_reason == "stop" and c.ids[-1] == eot]
    assert len(stopped) >= 10, [c.text for c in runs["sft", True]]
    assert all(c.completion_tokens == len(c.ids) <= 64 for c in stopped)
    assert [c.finish_reason for c in runs["base", True]] == ["length"] * len(QUESTIONS)
    assert all(len(c.ids) == 64 and eot not in c.ids for c in runs["base", True])


def test_second_run_reuses_cached_base(tiny_run, tmp_path):
    from chatloom.quickstart.base import ensure_base

    result, _ = tiny_run
    again, reused = ensure_base("tiny", 8, seq_len=128, batch_size=8, tag="tiny", corpus_chars=200_000, log=lambda *_: None)
    assert reused and again == result.base_dir


# Measured full runs (README, three fresh seeds on 2026-12-04): 802-807 s of wall time, of which 733-747 s trained,
# so at most 69 s for the rest (timing the steps, the corpus, loading, evaluating two models on 411 probes, the
# imitation sample, the report)
MEASURED_NON_TRAINING_SECONDS = 69.1


@pytest.mark.parametrize("minutes", [5, 15, 30])
def test_training_seconds_fit_the_minutes_and_use_them(minutes):
    seconds = budget.training_seconds(minutes)
    assert seconds + MEASURED_NON_TRAINING_SECONDS <= minutes * 60  # the run ends on time
    if minutes >= 15:  # and it does not leave the budget unused
        assert seconds + MEASURED_NON_TRAINING_SECONDS >= 0.95 * minutes * 60
    assert budget.training_seconds(1) == 0  # a minute cannot hold the evaluation: nothing trains


UNCAPPED = {"min_steps": 1, "max_pretrain": 10**9, "max_sft": 10**9}


@settings(max_examples=200, deadline=None)
@given(st.floats(200, 5000), st.floats(0.05, 3.0), st.floats(0.02, 3.0))
def test_budget_plan_fits_the_time(seconds, step, sft_step):
    p = budget.plan(seconds, step, sft_step, **UNCAPPED)
    # the hard limits (each stage stops on its clock) add up to the budget: a slow machine cannot make the run late
    assert p.pretrain_seconds + p.sft_seconds == pytest.approx(seconds)
    assert p.pretrain_seconds >= p.sft_seconds  # the base gets the larger share
    # at the timed speed the step counts fill each stage's seconds: pretraining within them, SFT a little beyond
    # (real SFT rows supervise only the assistant turns and run faster than the timed random rows; the clock stops it)
    assert 0.9 * p.pretrain_seconds - step <= p.pretrain_steps * step <= p.pretrain_seconds
    assert 0.9 * p.sft_seconds - sft_step <= p.sft_steps * sft_step <= 1.25 * p.sft_seconds
    faster = budget.plan(seconds, step / 2, sft_step / 2, **UNCAPPED)  # a faster machine trains longer
    assert faster.pretrain_steps >= 2 * p.pretrain_steps - 1 and faster.sft_steps >= 2 * p.sft_steps - 1


def test_budget_plan_clamps_and_gives_unused_seconds_to_sft():
    cheap = budget.plan(600, 1.0, 0.4)
    assert cheap.sft_steps > cheap.pretrain_steps  # cheaper SFT steps buy more of them
    fast = budget.plan(600, 0.01, 0.01, max_pretrain=300, max_sft=400)
    assert (fast.pretrain_steps, fast.sft_steps) == (300, 400)  # capped...
    assert 300 * 0.01 <= fast.pretrain_seconds <= 1.1 * 300 * 0.01  # ...pretraining keeps only what 300 steps take
    assert fast.sft_seconds == pytest.approx(600 - fast.pretrain_seconds)  # ...and SFT may have the rest
    slow = budget.plan(60, 10.0, min_steps=5)
    assert slow.pretrain_steps == slow.sft_steps == 5  # never below the minimum, even past the time...
    assert slow.pretrain_seconds + slow.sft_seconds == pytest.approx(60)  # ...which the clocks still hold to


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


def test_brought_plan_leaves_the_evaluation_its_time():
    p = budget.brought_plan(1800, step_seconds=7.0, eval_seconds=400)
    assert p.pretrain_steps == 0 and p.pretrain_seconds == 0
    assert p.sft_seconds + 400 + budget.BROUGHT_OVERHEAD <= 1800  # training, evaluation and the rest fit the budget
    assert p.sft_seconds >= 0.9 * (1800 - 400 - budget.BROUGHT_OVERHEAD)  # and training gets the rest
    assert p.sft_steps == int(p.sft_seconds / 7.0 * budget.STEP_MARGIN)  # a cap above what the clock allows
    costlier = budget.brought_plan(1800, step_seconds=7.0, eval_seconds=900)
    assert costlier.sft_seconds < p.sft_seconds - 450  # a slower evaluation leaves less training
    late = budget.brought_plan(300, step_seconds=7.0, eval_seconds=600)
    assert late.sft_seconds == 0 and late.sft_steps == 5  # past the budget: the minimum, no clock


def test_batch_seconds_extrapolates_prefill_plus_tokens():
    # 0.5 s of prefill and 0.1 s a token: 4 tokens take 0.9 s, 12 take 1.7 s, 64 take 6.9 s
    assert budget.batch_seconds(0.9, 1.7, 64) == pytest.approx(6.9)
    assert budget.batch_seconds(0.9, 0.8, 64) == pytest.approx(0.9)  # noise (longer ran faster): the prefill only
    assert budget.batch_seconds(0.1, 2.5, 64) == pytest.approx(64 * 0.3)  # no negative prefill


def test_time_generation_times_a_real_model(tmp_path):
    """On a real (random, 2-layer) Llama through the engine the evals use: a positive, finite price for a batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatloom import protocols
    from chatloom.conversation import Conversation
    from chatloom.engine import Engine
    from chatloom.tokenizers import load_tokenizer
    from chatloom.train.export import export_model
    from chatloom.train.models import BUNDLED_TOKENIZER, fit_vocab

    tok = load_tokenizer(BUNDLED_TOKENIZER)
    proto = protocols.get("chatml", tok)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=128))
    fit_vocab(model, len(tok))
    engine = Engine.from_pretrained(export_model(model, proto, tmp_path / "m"))
    estimate = budget.time_generation(engine, [Conversation.of(f"What is {i}+{i}?") for i in range(3)], 48, 8)
    assert 0 < estimate < 60
