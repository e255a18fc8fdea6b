"""Training: overfit-and-decode, exact loss masking, packed == unpacked, resume, export round trip, bad input, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chatloom import protocols
from chatloom.conversation import Conversation, Message, save
from chatloom.protocols import ProtocolError
from chatloom.train import DataError, ModelNotFound, Run, TrainConfig, make_model_dir, train
from chatloom.train.data import IGNORE, Example, best_fit, conversation_examples, pack, shift_targets, truncate
from chatloom.train.loop import SupervisedLoss
from chatloom.train.models import build_model, load_model

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
         "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
CONVS = [Conversation.of(f"Who is {n}?", f"{n.title()} is friend number {i}.") for i, n in enumerate(NAMES)]


@pytest.fixture(scope="module")
def convs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "friends.jsonl"
    save(CONVS, path)
    return path


@pytest.fixture(scope="module")
def overfit(convs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "overfit"
    result = train(TrainConfig(out=str(out), model="tiny", data=[str(convs_file)], val=[str(convs_file)], seq_len=128,
                               batch_size=5, max_steps=60, lr=5e-3, schedule="constant", warmup_steps=5,
                               weight_decay=0.0, precision="fp32", eval_every=40, progress=False))
    return result


def test_overfit_reproduces_answers_and_stops(overfit):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(overfit.out_dir).eval()
    proto = protocols.for_model(overfit.out_dir)
    eot = proto.end_of_turn_id
    for conv in CONVS:
        prompt = proto.prompt(Conversation(conv.messages[:-1]))
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=eot,
                             pad_token_id=eot)
        completion = ids[0, len(prompt):].tolist()
        assert completion[-1] == eot, proto.tokenizer.decode(completion)
        assert proto.tokenizer.decode(completion[:-1]) == conv.messages[-1].content
    assert overfit.final["train_loss"] < 0.05 and overfit.final["val_loss"] < 0.05


def test_run_artifacts(overfit):
    out = overfit.out_dir
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json",
                 "chatloom.json", "metrics.jsonl", "loss.png", "README.md", "run_card.json", "config.yaml"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 61))
    assert sum("val_loss" in r for r in rows) == 3  # start, step 40, end
    card = json.loads((out / "run_card.json").read_text())
    assert card["data"]["examples"] == 20 and 0 < card["data"]["padding_waste"] < 1
    assert str(next(iter(card["data"]["files"]))).endswith("friends.jsonl") and card["final"]["steps"] == 60
    assert json.loads((out / "chatloom.json").read_text())["protocol"] == "chatml"


def test_export_round_trip_with_plain_transformers(overfit):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = overfit.out_dir
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    proto = protocols.get("chatml", str(out))
    eot = proto.end_of_turn_id
    assert eot in model.generation_config.eos_token_id
    assert (out / "chat_template.jinja").read_text() == proto.chat_template
    conv = Conversation([Message("system", "Be brief."), *CONVS[3].messages[:-1]])
    msgs = [m.to_dict() for m in conv.messages]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    assert list(ids) == proto.prompt(conv)
    plain = Conversation(CONVS[3].messages[:-1])
    enc = tok.apply_chat_template([m.to_dict() for m in plain.messages], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    gen = model.generate(**enc, max_new_tokens=40, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
    assert gen[-1] == eot and eot not in gen[:-1]  # generate() stopped by itself at the end of the turn
    assert tok.decode(gen, skip_special_tokens=True) == CONVS[3].messages[-1].content


def _tiny_setup(convs, seq_len=64):
    torch.manual_seed(0)
    model, tok = load_model("tiny", seed=0)
    proto = protocols.get("chatml", tok)
    from chatloom.train.models import fit_vocab

    fit_vocab(model, len(tok))
    return model.float(), proto, conversation_examples(convs, proto, seq_len)


def test_packed_loss_equals_unpacked_loss():
    convs = CONVS[:7] + [Conversation.of("Hi", "Hello there, friend!", "And again?", "Again: hello.", system="Short.")]
    model, proto, examples = _tiny_setup(convs, seq_len=96)
    loss = SupervisedLoss(model)
    shard = pack(examples, 96, pad_id=0)
    assert len(shard) < len(examples)  # several conversations share a row
    b = shard.batch(range(len(shard)))
    packed = loss(b["ids"], b["positions"], b["segments"], b["targets"]).item()
    unpacked = 0.0
    for e in examples:
        ids = torch.tensor([e.ids])
        unpacked += loss(ids, torch.arange(len(e.ids))[None], torch.zeros_like(ids), torch.tensor([e.targets])).item()
    assert packed == pytest.approx(unpacked, rel=1e-5, abs=1e-5)
    # and the full-vocabulary reference (transformers' own forward, one conversation per row) agrees
    ref = 0.0
    for e in examples:
        logits = model(torch.tensor([e.ids])).logits[0]
        ref += torch.nn.functional.cross_entropy(logits, torch.tensor(e.targets), ignore_index=IGNORE,
                                                 reduction="sum").item()
    assert packed == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_a_batch_drops_the_padding_columns_of_its_rows_and_keeps_the_loss():
    """A mostly empty row (a shard's last) is cut after its last real token (rounded up to TRIM_MULTIPLE columns):
    same loss as the full row, and every real token kept."""
    from chatloom.train.data import TRIM_MULTIPLE

    model, proto, examples = _tiny_setup(CONVS[:3], seq_len=512)
    shard = pack(examples, 512, pad_id=0)
    real = int((shard.segments >= 0).sum(axis=1).max())
    assert real < 512 - TRIM_MULTIPLE  # the rows are mostly padding
    b = shard.batch(range(len(shard)))
    assert b["ids"].shape[1] == -(-real // TRIM_MULTIPLE) * TRIM_MULTIPLE
    assert int((b["segments"] >= 0).sum()) == int((shard.segments >= 0).sum())
    full = {k: torch.from_numpy(getattr(shard, k)).long() for k in ("ids", "positions", "segments", "targets")}
    loss = SupervisedLoss(model)
    assert loss(b["ids"], b["positions"], b["segments"], b["targets"]).item() == pytest.approx(
        loss(full["ids"], full["positions"], full["segments"], full["targets"]).item(), rel=1e-6)


def test_only_supervised_positions_produce_gradient():
    conv = Conversation.of("Name three colours please", "Red, green and blue.")
    model, proto, _ = _tiny_setup([conv])
    r = proto.render(conv)
    loss = SupervisedLoss(model)

    def grads(next_ids):
        model.zero_grad()
        ids = torch.tensor([r.ids])
        t = torch.tensor([shift_targets(next_ids, r.mask)])
        loss(ids, torch.arange(len(r.ids))[None], torch.zeros_like(ids), t).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    base = grads(r.ids)
    user_changed = [i if m else (i * 7 + 3) % 8000 for i, m in zip(r.ids, r.mask, strict=True)]
    assert torch.equal(base, grads(user_changed))  # the labels of unsupervised tokens are never read
    first_sup = r.mask.index(1)
    answer_changed = list(r.ids)
    answer_changed[first_sup] = (answer_changed[first_sup] + 1) % 8000
    assert not torch.equal(base, grads(answer_changed))  # control: a supervised label does matter
    assert r.mask[len(r.ids) - 1 - r.ids[::-1].index(proto.end_of_turn_id)] == 1  # end-of-turn is supervised


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=2, max_size=60), st.integers(1, 60))
def test_truncation_never_keeps_a_cut_supervised_run(mask, seq_len):
    ids = list(range(len(mask)))
    kept_ids, kept = truncate(ids, mask, seq_len)
    assert len(kept_ids) <= seq_len and kept == mask[:len(kept)]
    if kept and kept[-1] == 1 and len(kept) < len(mask):
        assert mask[len(kept)] == 0  # the last kept supervised run is complete (its end-of-turn is in)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=80))
def test_best_fit_places_every_example_once_within_capacity(lengths):
    rows = best_fit(lengths, 50)
    placed = sorted(i for r in rows for i in r)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 50 for r in rows)
    assert len(rows) <= 2 * sum(lengths) / 50 + 1  # best fit never uses more than twice the optimal row count


def test_truncated_conversation_keeps_end_of_turn_or_is_skipped():
    long = Conversation.of("q " * 5, "word " * 80)
    _, proto, _ = _tiny_setup([])
    from chatloom.train.data import DataStats

    stats = DataStats()
    examples = conversation_examples([long, CONVS[0]], proto, 40, stats)
    assert stats.truncated == 1 and stats.skipped_no_supervised == 1 and stats.examples == 1
    assert stats.skipped_ids == [long.id] and len(examples) == 1
    two_turns = Conversation.of("a", "short answer", "b", "word " * 80)
    (ex,) = conversation_examples([two_turns], proto, 40)
    sup = [t for t in ex.targets if t != IGNORE]
    assert len(ex.ids) <= 40 and sup[-1] == proto.end_of_turn_id  # the cut answer is dropped whole, the first kept
    assert proto.tokenizer.decode(sup[:-1]) == "short answer"


def test_resume_gives_the_same_result(convs_file, tmp_path):
    from safetensors.torch import load_file

    def cfg(out, **kw):
        return TrainConfig(out=str(out), model="tiny", data=[str(convs_file)], seq_len=64, batch_size=2, max_steps=6,
                           lr=3e-3, save_every=3, precision="fp32", progress=False, **kw)

    straight = train(cfg(tmp_path / "a"))
    stopped = train(cfg(tmp_path / "b", interrupt_after=3))
    assert stopped.interrupted and stopped.steps == 3 and not (tmp_path / "b" / "model.safetensors").exists()
    assert (tmp_path / "b" / "checkpoints" / "step-00000003" / "state.pt").exists()
    assert not list((tmp_path / "b" / "checkpoints").glob(".tmp*"))
    resumed = train(cfg(tmp_path / "b", resume=True))
    assert resumed.steps == 6
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.final["train_loss"] == straight.final["train_loss"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_accumulation_gives_the_gradient_of_one_big_batch(convs_file, tmp_path):
    def grads(batch_size, grad_accum):
        run = Run(TrainConfig(out=str(tmp_path), model="tiny", data=[str(convs_file)], seq_len=40, batch_size=batch_size,
                              grad_accum=grad_accum, precision="fp32", progress=False))
        out = run.accumulate(0)
        return out["loss"], torch.cat([p.grad.flatten() for p in run.model.parameters()])

    loss_1, g_1 = grads(4, 1)
    loss_2, g_2 = grads(1, 4)
    assert loss_1 == pytest.approx(loss_2, rel=1e-6)
    torch.testing.assert_close(g_1, g_2, rtol=1e-5, atol=1e-7)


def test_bad_input_fails_before_training(tmp_path, convs_file):
    unsupervised = [Conversation([Message("user", "hi"), Message("assistant", "hello", train=False)])] * 3
    save(unsupervised, tmp_path / "none.jsonl")
    with pytest.raises(DataError, match="no supervised tokens"):
        train(TrainConfig(out=str(tmp_path / "r1"), model="tiny", data=[str(tmp_path / "none.jsonl")], progress=False))
    assert not (tmp_path / "r1").exists()
    with pytest.raises(ModelNotFound, match="does-not-exist"):
        train(TrainConfig(out=str(tmp_path / "r2"), model=str(tmp_path / "does-not-exist"), data=[str(convs_file)]))
    base = make_model_dir(tmp_path / "base", protocol="chatml")
    with pytest.raises(ProtocolError, match="clash"):
        train(TrainConfig(out=str(tmp_path / "r3"), model=str(base), protocol="llama3", data=[str(convs_file)]))
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_control_tokens_are_added_and_rows_start_at_the_mean(gpt2):
    model = build_model("tiny", len(gpt2), seed=0)
    before = model.get_input_embeddings().weight.detach().clone()
    proto = protocols.get("chatml", gpt2)
    from chatloom.train.models import fit_vocab

    added = fit_vocab(model, len(gpt2))
    assert added == len(proto.added_tokens) > 0
    emb = model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(emb[:len(before)], before)
    torch.testing.assert_close(emb[proto.end_of_turn_id], before.mean(0))
    torch.testing.assert_close(model.get_output_embeddings().weight.detach()[-1],
                               model.get_output_embeddings().weight.detach()[:len(before)].mean(0))


def test_cli_pretrain_and_sft(tmp_path, convs_file):
    from typer.testing import CliRunner

    from chatloom.cli import app

    docs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    docs[0].write_text("The loom weaves threads into cloth. " * 20)
    docs[1].write_text("Conversations become tokens. " * 10)
    res = CliRunner().invoke(app, ["train", "pretrain", "--model", "tiny", "--text", str(docs[0]), str(docs[1]),
                                   "--out", str(tmp_path / "pre"), "--max-steps", "2", "--seq-len", "64",
                                   "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "pre" / "run_card.json").read_text())
    assert card["config"]["mode"] == "pretrain" and card["data"]["supervised_fraction"] > 0.8
    (tmp_path / "cfg.yaml").write_text(f"model: {tmp_path / 'pre'}\ndata: [{convs_file}]\nseq_len: 64\nlr: 0.001\n")
    res = CliRunner().invoke(app, ["train", "sft", "--config", str(tmp_path / "cfg.yaml"), "--out",
                                   str(tmp_path / "sft"), "--max-steps", "2", "--lora", "--protocol", "chatml"])
    assert res.exit_code == 0, res.output
    resolved = (tmp_path / "sft" / "config.yaml").read_text()
    assert "lora: true" in resolved and "total_steps: 2" in resolved
    res = CliRunner().invoke(app, ["train", "sft", "--model", str(tmp_path / "nope"), "--data", str(convs_file),
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "nope" in res.output
    assert Example([1, 2], [2, IGNORE]).num_supervised == 1


def test_step_without_supervised_tokens_is_skipped_not_nan(convs_file, tmp_path):
    run = Run(TrainConfig(out=str(tmp_path / "r"), model="tiny", data=[str(convs_file)], seq_len=64, batch_size=2,
                          max_steps=2, precision="fp32", progress=False))
    run.shard.targets[:] = IGNORE  # as if truncation had removed every supervised token of these rows
    before = [p.detach().clone() for p in run.model.parameters()]
    result = run.fit()
    assert result.skipped_steps == 2 and result.final["train_loss"] is None
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped") for r in rows] == [True, True] and not any("loss" in r for r in rows)


def test_sft_mixes_documents_into_the_conversations(convs_file, tmp_path):
    """`text` in SFT mode: documents (every token supervised) are packed beside the conversations, each in its own
    segment, and count in the step's supervised tokens; the conversations' own masks are unchanged."""
    docs = tmp_path / "replay.jsonl"
    texts = [f"{a}+{b} = {a + b}" for a in range(5) for b in range(5)]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    cfg = dict(out=str(tmp_path / "run"), model="tiny", data=[str(convs_file)], seq_len=64, batch_size=4, max_steps=2,
               precision="fp32", progress=False)
    plain, mixed = Run(TrainConfig(**cfg)), Run(TrainConfig(**cfg, text=[str(docs)]))
    tok = mixed.protocol.tokenizer
    doc_tokens = sum(len(tok.encode(t)) + 1 for t in texts)  # + EOS
    assert mixed.stats.examples == plain.stats.examples + len(texts)
    assert mixed.stats.tokens == plain.stats.tokens + doc_tokens
    assert mixed.stats.supervised_tokens == plain.stats.supervised_tokens + doc_tokens - len(texts)
    segments_per_row = [len(set(row[row >= 0].tolist())) for row in mixed.shard.segments]
    assert sum(segments_per_row) == len(CONVS) + len(texts)  # every example its own segment: no cross-attention
    assert mixed.fit().steps == 2
    card = json.loads((tmp_path / "run" / "run_card.json").read_text())
    assert str(docs) in card["data"]["files"]


def test_max_seconds_stops_on_time_with_the_schedule_run_to_its_end(convs_file, tmp_path):
    out = tmp_path / "timed"
    result = train(TrainConfig(out=str(out), model="tiny", data=[str(convs_file)], seq_len=64, batch_size=2,
                               max_steps=100_000, max_seconds=4.0, lr=1e-3, min_lr_ratio=0.1, warmup_steps=2,
                               precision="fp32", progress=False))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
    assert result.final["stopped_by"] == "time" and 4 < result.steps < 100_000  # few steps on a loaded machine
    assert 4.0 <= result.final["seconds"] <= 8.0
    lrs = [r["lr"] for r in rows]
    assert max(lrs) == pytest.approx(1e-3, rel=0.05)  # warmed up to the peak...
    assert lrs[-1] < 0.15e-3  # ...and the cosine reached its floor when the clock ran out, not at step 100,000
    assert all(b <= a + 1e-12 for a, b in zip(lrs[2:], lrs[3:]))  # after warm-up it only goes down
    steps_first = train(TrainConfig(out=str(tmp_path / "steps"), model="tiny", data=[str(convs_file)], seq_len=64,
                                    batch_size=2, max_steps=3, max_seconds=600, precision="fp32", progress=False))
    assert steps_first.final["stopped_by"] == "steps" and steps_first.steps == 3


def test_neftune_noise_is_bounded_and_only_in_training_mode():
    """NEFTune: uniform noise of at most alpha / sqrt(L * d) on each input embedding while training, none in eval."""
    import math

    from chatloom.train.loop import add_embedding_noise

    model = build_model("tiny", 300, seed=0)
    ids = torch.randint(0, 300, (2, 50))
    clean = model.get_input_embeddings()(ids).detach()
    handle = add_embedding_noise(model, alpha=5.0)
    model.train()
    noisy = model.get_input_embeddings()(ids).detach()
    bound = 5.0 / math.sqrt(50 * clean.shape[-1])
    diff = (noisy - clean).abs()
    assert diff.max() <= bound * (1 + 1e-6) and diff.max() > 0.9 * bound and diff.mean() > 0.4 * bound
    model.eval()
    assert torch.equal(model.get_input_embeddings()(ids), clean)
    handle.remove()
    model.train()
    assert torch.equal(model.get_input_embeddings()(ids), clean)


def test_neftune_trains_and_exports_a_clean_model(convs_file, tmp_path):
    """A run with NEFTune on learns (loss falls) and its exported model matches the trainer's weights in eval mode:
    the noise never reaches the saved model or the post-training parity check."""
    with pytest.raises(ValueError, match="neftune_alpha"):
        TrainConfig(neftune_alpha=-1.0)
    result = train(TrainConfig(out=str(tmp_path / "nef"), model="tiny", data=[str(convs_file)], seq_len=128, batch_size=5,
                               max_steps=30, lr=5e-3, warmup_steps=3, precision="fp32", neftune_alpha=5.0, progress=False))
    losses = [json.loads(line)["loss"] for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert "neftune_alpha: 5.0" in (result.out_dir / "config.yaml").read_text()
    assert result.check is not None and result.check["ok"], result.check


def test_train_frees_the_model_and_optimizer_when_it_returns(convs_file, tmp_path, monkeypatch):
    """The run sits in reference cycles (its schedule's closure, frames of tracebacks caught in libraries): `train`
    collects them, so a caller that evaluates next (the quickstart) does not carry the trained model, its optimizer
    state and gradients beside the evaluation's engines. With automatic collection off, only that can free them."""
    import gc
    import weakref

    made = []
    init = Run.__init__

    def recording_init(self, cfg):
        init(self, cfg)
        made.append((weakref.ref(self.model), weakref.ref(self.optimizer)))

    monkeypatch.setattr(Run, "__init__", recording_init)
    gc.disable()
    try:
        train(TrainConfig(out=str(tmp_path / "run"), model="tiny", data=[str(convs_file)], seq_len=64, batch_size=4,
                          max_steps=2, progress=False))
        assert made and all(ref() is None for ref in made[0]), "the run's model or optimizer outlived train()"
    finally:
        gc.enable()
