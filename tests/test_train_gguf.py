"""GGUF base models: `load_model("x.gguf")` goes through transformers' GGUF loader and gives back the weights and the
tokenizer that were written (tests/gguf_tiny.py writes them like llama.cpp does), and `chatloom train sft` on a .gguf
adds the protocol's control tokens, grows the embeddings and exports a plain Hugging Face model directory."""

from __future__ import annotations

import json

import pytest
import torch

from chatloom import protocols
from chatloom.conversation import Conversation, save
from chatloom.tokenizers import load_tokenizer
from chatloom.train.models import BUNDLED_TOKENIZER, load_model

from .gguf_tiny import write_tiny_llama_gguf


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf"
    reference = write_tiny_llama_gguf(path, seed=5)
    return path, reference


def test_load_model_reads_the_written_weights_and_tokenizer(gguf_model):
    path, reference = gguf_model
    model, tok = load_model(path)
    assert model.hf_quantizer is None  # trains and saves as a plain model
    assert model.dtype == torch.float32 and not model.config.tie_word_embeddings
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 2
    ids = torch.randint(0, len(tok), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model.eval()(ids).logits, reference(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # q/k un-permuted, norms and head in place
    bundled = load_tokenizer(BUNDLED_TOKENIZER)
    assert len(tok) == len(bundled) and tok.eos_token_id == bundled.eos_token_id == 0
    for text in ["Hello world! The loom weaves 123 threads.", " two  spaces\nand a new line", "naïve café ☕"]:
        assert tok.encode(text) == bundled.encode(text)
        assert tok.decode(tok.encode(text)) == text


def test_cli_sft_on_a_gguf_base_exports_a_plain_model(gguf_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from chatloom.cli import app

    path, reference = gguf_model
    data = tmp_path / "convs.jsonl"
    save([Conversation.of(f"What is {i} + {i}?", f"{2 * i}.") for i in range(8)], data)
    out = tmp_path / "sft"
    res = CliRunner().invoke(app, ["train", "sft", "--model", str(path), "--protocol", "chatml", "--data", str(data),
                                   "--out", str(out), "--max-steps", "2", "--seq-len", "64", "--batch-size", "4",
                                   "--precision", "fp32", "--lr", "1e-3"])
    assert res.exit_code == 0, res.output
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    proto = protocols.get("chatml", str(out))
    base_rows = reference.config.vocab_size
    added = len(proto.tokenizer) - base_rows
    assert added == 2 and model.config.vocab_size == base_rows + added  # <|im_start|>, <|im_end|>
    assert model.get_input_embeddings().weight.shape[0] == base_rows + added
    assert tok.convert_tokens_to_ids("<|im_end|>") == proto.end_of_turn_id >= base_rows
    assert proto.end_of_turn_id in model.generation_config.eos_token_id
    trained = model.get_input_embeddings().weight.detach()
    assert not torch.equal(trained[:base_rows], reference.get_input_embeddings().weight)  # it trained
    torch.testing.assert_close(trained[:base_rows], reference.get_input_embeddings().weight, rtol=0, atol=0.05)
    meta = json.loads((out / "chatloom.json").read_text())
    assert meta["protocol"] == "chatml" and meta["base_model"] == str(path) and meta["steps"] == 2
    card = json.loads((out / "run_card.json").read_text())
    assert card["resolved"]["added_embedding_rows"] == 2
    assert card["resolved"]["embedding_rows_copied"] == {"<|im_end|>": tok.eos_token}  # said where it started
    question = Conversation(Conversation.of("What is 3 + 3?", "6.").messages[:1])
    enc = tok.apply_chat_template([m.to_dict() for m in question.messages], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)
    assert list(enc["input_ids"]) == proto.prompt(question)  # the exported template is the protocol


def test_loading_a_gguf_parses_its_header_once(gguf_model, monkeypatch):
    import gguf

    path, _ = gguf_model
    built = []
    original = gguf.GGUFReader

    class Counting(original):
        def __init__(self, file, mode="r"):
            built.append(str(file))
            super().__init__(file, mode)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    model, tok = load_model(path)
    assert len(built) == 1  # transformers asks for the config, the weights and the tokenizer: one shared reader
    assert gguf.GGUFReader is Counting  # restored after loading
    assert len(tok) > 0 and model.config.num_hidden_layers == 2


def test_a_model_saved_from_a_gguf_base_is_plain_and_saves_again(gguf_model, tmp_path):
    """The quickstart's path: GGUF -> model directory (bring_base) -> load, train, save. The directory must not claim
    a GGUF quantization, or transformers refuses to save the reloaded model ("quantized with gguf")."""
    from chatloom.quickstart.base import bring_base

    path, _ = gguf_model
    base = bring_base(str(path), tmp_path / "base")
    assert "quantization_config" not in json.loads((base / "config.json").read_text())
    model, _ = load_model(base)
    assert getattr(model, "hf_quantizer", None) is None
    model.save_pretrained(tmp_path / "again")  # raised ValueError before
    assert (tmp_path / "again" / "model.safetensors").exists()
