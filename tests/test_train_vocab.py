"""Vocabularies grow in one place (`train.models.fit_vocab`): training and the engine start new control-token rows at
the mean of the existing rows, not at random."""

from __future__ import annotations

import shutil

import torch

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
    torch.testing.assert_close(grown_in[old:], emb.mean(0).expand(new - old, -1))
    torch.testing.assert_close(grown_out[old:], head.mean(0).expand(new - old, -1))
