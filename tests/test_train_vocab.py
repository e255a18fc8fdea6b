"""Vocabularies grow in one place (`train.models.fit_vocab`): training and the engine start new control-token rows at
the mean of the existing rows, not at random, except that a trained model's new end-of-turn token starts as a copy of
its end-of-text token, so that it ends a turn where it would end a text (its logit equals end-of-text's everywhere)."""

from __future__ import annotations

import shutil

import torch

from chatloom import Conversation, Message
from chatloom.engine import Engine
from chatloom.tokenizers import load_tokenizer
from chatloom.train.models import BUNDLED_TOKENIZER, build_model


def test_engine_grows_a_model_without_control_tokens_like_training_does(tmp_path):
    tok = load_tokenizer(BUNDLED_TOKENIZER)
    old = len(tok)
    model = build_model("tiny", old, seed=3)
    model.save_pretrained(tmp_path)
    for f in BUNDLED_TOKENIZER.iterdir():
        shutil.copy(f, tmp_path / f.name)
    emb, head = model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()
    engine = Engine.from_pretrained(tmp_path, protocol="chatml", dtype="fp32")
    new = len(engine.protocol.tokenizer)
    assert new > old  # chatml's control tokens were added
    grown_in = engine.model.get_input_embeddings().weight.detach()
    grown_out = engine.model.get_output_embeddings().weight.detach()
    assert grown_in.shape[0] == grown_out.shape[0] == new
    torch.testing.assert_close(grown_in[:old], emb)
    eot, eos = engine.protocol.end_of_turn_id, tok.eos_token_id
    assert eos is not None and eos < old <= eot
    rest = [i for i in range(old, new) if i != eot]
    torch.testing.assert_close(grown_in[rest], emb.mean(0).expand(len(rest), -1))
    torch.testing.assert_close(grown_out[rest], head.mean(0).expand(len(rest), -1))
    torch.testing.assert_close(grown_in[eot], emb[eos])
    torch.testing.assert_close(grown_out[eot], head[eos])


def test_training_a_trained_model_starts_end_of_turn_as_end_of_text(tmp_path):
    """From the first step, the grown model gives the end-of-turn token exactly the end-of-text token's logit at every
    position (a mean row gives it the average logit instead); a named config (random weights) keeps mean rows."""
    from chatloom.train import TrainConfig
    from chatloom.train.loop import Run

    tok = load_tokenizer(BUNDLED_TOKENIZER)
    build_model("tiny", len(tok), seed=5).save_pretrained(tmp_path / "base")
    for f in BUNDLED_TOKENIZER.iterdir():
        shutil.copy(f, tmp_path / "base" / f.name)
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    run = Run(TrainConfig(out=str(tmp_path / "out"), mode="sft", model=str(tmp_path / "base"), data=[str(data)],
                          protocol="chatml", max_steps=1, seq_len=64, batch_size=1, precision="fp32"))
    eot, eos = run.protocol.end_of_turn_id, run.protocol.tokenizer.eos_token_id
    assert run.added_rows == 2 and eos < len(tok) <= eot
    conv = Conversation([Message("user", "hi"), Message("assistant", "hello")])
    ids = torch.tensor([run.protocol.render(conv).ids])
    with torch.no_grad():
        logits = run.model(ids).logits[0]
    torch.testing.assert_close(logits[:, eot], logits[:, eos])
    start = run.protocol.tokenizer.token_id("<|im_start|>")
    assert not torch.allclose(logits[:, start], logits[:, eos])  # the others: the mean row
    assert run.resolved()["resolved"]["embedding_rows_copied"] == {"<|im_end|>": "<|endoftext|>"}  # the run card says so

    scratch = Run(TrainConfig(out=str(tmp_path / "out2"), mode="sft", model="tiny", data=[str(data)], protocol="chatml",
                              max_steps=1, seq_len=64, batch_size=1, precision="fp32"))
    head = scratch.model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(head[eot], head[start])  # both at the mean: nothing trained to copy from
    assert scratch.resolved()["resolved"]["embedding_rows_copied"] == {}
