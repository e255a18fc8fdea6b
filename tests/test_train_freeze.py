"""`freeze_embeddings` (`chatloom train sft --freeze-embeddings`): the input embeddings leave SFT bit for bit as they
came in, everything else trains; the cases where freezing them would be wrong are refused with the reason."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from chatloom.cli import app
from chatloom.tokenizers import load_tokenizer
from chatloom.train import TrainConfig
from chatloom.train.loop import Run, freeze_input_embeddings
from chatloom.train.models import BUNDLED_TOKENIZER, build_model, make_model_dir

CONVS = [{"messages": [{"role": "user", "content": f"What is {a}+{b}?"}, {"role": "assistant", "content": f"{a + b}"}]}
         for a in range(6) for b in range(6)]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVS))
    return path


def weights(model_dir):
    return load_file(str(next(model_dir.glob("*.safetensors"))))


def test_frozen_input_embeddings_come_out_unchanged_and_the_rest_trains(tmp_path, data):
    base = make_model_dir(tmp_path / "base", config="tiny", seed=3)
    res = CliRunner().invoke(app, ["train", "sft", "--model", str(base), "--data", str(data), "--out",
                                   str(tmp_path / "sft"), "--max-steps", "4", "--lr", "1e-2", "--seq-len", "64",
                                   "--precision", "fp32", "--freeze-embeddings"])
    assert res.exit_code == 0, res.output
    before, after = weights(base), weights(tmp_path / "sft")
    name = "model.embed_tokens.weight"
    assert torch.equal(before[name], after[name])
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "lm_head.weight" in changed and any(".layers.0." in k for k in changed)
    card = json.loads((tmp_path / "sft" / "run_card.json").read_text())
    assert card["config"]["freeze_embeddings"] is True


def test_freezing_is_refused_where_it_would_be_wrong(tmp_path, data):
    for extra in ({"lora": True}, {"fsdp": True}):
        with pytest.raises(ValueError, match="freeze_embeddings"):
            TrainConfig(out=str(tmp_path / "o"), model="tiny", data=[str(data)], freeze_embeddings=True, **extra)
    # a base without the protocol's control tokens: their new rows could never learn
    tok = load_tokenizer(BUNDLED_TOKENIZER)
    build_model("tiny", len(tok), seed=1).save_pretrained(tmp_path / "plain")
    for f in BUNDLED_TOKENIZER.iterdir():
        shutil.copy(f, tmp_path / "plain" / f.name)
    with pytest.raises(ValueError, match="new token rows"):
        Run(TrainConfig(out=str(tmp_path / "o2"), model=str(tmp_path / "plain"), data=[str(data)], max_steps=1,
                        seq_len=64, freeze_embeddings=True, precision="fp32"))
    # a tied head is the embedding matrix: it has to learn
    tied = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    with pytest.raises(ValueError, match="tied"):
        freeze_input_embeddings(tied, added_rows=0)
    assert tied.get_input_embeddings().weight.requires_grad
