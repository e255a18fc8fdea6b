"""A tied input embedding adds its gradient straight into the output head's (train/tied_embedding.py): the gradients
equal those of the plain computation (full logits, `F.cross_entropy`, stock `nn.Embedding`), over several backward
passes, in float32 and under bf16 autocast, with a padding row; the stock embedding backward (a zero-filled
[vocab, dim] tensor) no longer runs; models it does not apply to keep stock autograd."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from chatloom.conversation import Conversation, save
from chatloom.tokenizers import load_tokenizer
from chatloom.train import Run, TrainConfig
from chatloom.train.attention import use_training_attention
from chatloom.train.data import IGNORE
from chatloom.train.fused_loss import Workspace
from chatloom.train.loop import SupervisedLoss
from chatloom.train.models import BUNDLED_TOKENIZER
from chatloom.train.tied_embedding import tie_gradient, untie_gradient

VOCAB, PAD = 300, 3


def tiny_llama(tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, pad_token_id=PAD,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def tiny_gemma3() -> Gemma3ForCausalLM:
    """Gemma 3's embedding is a subclass that scales its output (`embed_scale`): handled, after a check."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
                              tie_word_embeddings=True, pad_token_id=PAD, attn_implementation="sdpa")
    return Gemma3ForCausalLM(config)


def batches(n: int = 2):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (2, 32), generator=g)
        ids[0, 5] = PAD  # the padding row must get no gradient from the embedding
        targets = torch.roll(ids, -1, 1)
        targets[:, :10] = IGNORE  # a prompt
        targets[:, -1] = IGNORE
        out.append((ids, targets))
    return out


def plain_grads(model, precision: str) -> dict:
    """First principles: every logit, float32 cross-entropy over the supervised positions, stock autograd."""
    model.zero_grad(set_to_none=True)
    for ids, targets in batches():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
        (loss / 7).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def tied_grads(model, precision: str, workspace=None) -> tuple[dict, set]:
    model.zero_grad(set_to_none=True)
    handoff = tie_gradient(model)
    assert handoff
    use_training_attention(model)
    loss_of = SupervisedLoss(model, handoff=handoff, workspace=workspace)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for ids, targets in batches():
            positions = torch.arange(ids.shape[1]).repeat(ids.shape[0], 1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_of(ids, positions, torch.zeros_like(ids), targets)
            (loss / 7).backward()
    ops = {e.name for e in prof.events()}
    untie_gradient(model)
    return {n: p.grad.clone() for n, p in model.named_parameters()}, ops


@pytest.mark.parametrize(("build", "precision", "workspace"), [
    (tiny_llama, "fp32", None), (tiny_llama, "bf16", None), (tiny_gemma3, "fp32", None),
    (tiny_llama, "bf16", Workspace()),  # as the loop runs under autocast on the CPU: the loss keeps its buffers
])
def test_tied_embedding_gradient_equals_the_plain_computation(build, precision, workspace):
    model = build()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    expected = plain_grads(model, precision)
    got, ops = tied_grads(model, precision, workspace)
    assert "aten::embedding_dense_backward" not in ops  # no second [vocab, dim] gradient, no zero-fill
    assert "aten::index_add_" in ops
    # bf16: the fused loss rounds its products in other places than full bf16 logits do
    tol = 1e-5 if precision == "fp32" else 3e-2
    for name, grad in expected.items():
        scale = grad.abs().max().item() or 1.0
        assert (got[name] - grad).abs().max().item() <= tol * scale, name


def test_the_padding_row_gets_only_the_head_gradient():
    """With the handoff, the padding token's row receives the head's gradient and nothing from the embedding, as stock
    `nn.Embedding(padding_idx=...)` does: compare against a model whose head is a separate copy of the matrix."""
    tied = tiny_llama()
    got, _ = tied_grads(tied, "fp32")
    untied = tiny_llama(tied=False)
    untied.load_state_dict(tied.state_dict(), strict=False)
    untied.lm_head.weight = torch.nn.Parameter(tied.lm_head.weight.detach().clone())
    parts = plain_grads(untied, "fp32")
    assert torch.allclose(got["model.embed_tokens.weight"][PAD], parts["lm_head.weight"][PAD], atol=1e-5)
    assert parts["model.embed_tokens.weight"][PAD].abs().max() == 0
    summed = parts["lm_head.weight"] + parts["model.embed_tokens.weight"]
    assert torch.allclose(got["model.embed_tokens.weight"], summed, atol=1e-5)


def test_models_it_does_not_apply_to_keep_stock_autograd():
    assert not tie_gradient(tiny_llama(tied=False))  # untied: nothing to add into
    frozen = tiny_llama()
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not tie_gradient(frozen)

    class Scaled(torch.nn.Embedding):  # like Gemma 3's scaled embedding: its own forward stays
        def forward(self, ids):
            return super().forward(ids) * 2.0

    scaled = tiny_llama()
    emb = scaled.get_input_embeddings()
    scaled.model.embed_tokens = Scaled(VOCAB, 64, padding_idx=PAD, _weight=emb.weight)
    scaled.lm_head.weight = scaled.model.embed_tokens.weight
    assert not tie_gradient(scaled)
    scaled.model.embed_tokens.embed_scale = torch.tensor(3.0)  # says it scales by 3, computes x 2: the check refuses
    assert not tie_gradient(scaled)
    assert "forward" not in vars(scaled.model.embed_tokens)

    model = tiny_llama()
    assert tie_gradient(model)
    assert "forward" in vars(model.get_input_embeddings())
    untie_gradient(model)
    assert "forward" not in vars(model.get_input_embeddings())


def test_without_the_head_gradient_the_embedding_falls_back_to_stock():
    """The handoff empty (a head that is not fused): the patched embedding computes the stock gradient itself."""
    model = tiny_llama()
    expected = plain_grads(model, "fp32")
    model.zero_grad(set_to_none=True)
    assert tie_gradient(model)  # a handoff the loss never fills
    for ids, targets in batches():
        logits = model(input_ids=ids).logits
        (F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum") / 7).backward()
    untie_gradient(model)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-6, rtol=1e-5), name


def test_a_training_run_on_a_tied_model_uses_it_and_saves_a_plain_model(tmp_path):
    """Through `Run`: the run card says so, the loss falls, and the saved model's embedding is a plain module again."""
    vocab = len(load_tokenizer(BUNDLED_TOKENIZER)) + 2  # room for the protocol's control tokens
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
                     ).save_pretrained(tmp_path / "base")
    for f in BUNDLED_TOKENIZER.iterdir():
        shutil.copy(f, tmp_path / "base" / f.name)
    data = tmp_path / "convs.jsonl"
    save([Conversation.of(f"What is {i} + {i}?", f"{2 * i}.") for i in range(8)], data)
    run = Run(TrainConfig(out=str(tmp_path / "sft"), model=str(tmp_path / "base"), data=[str(data)], seq_len=64,
                          batch_size=4, max_steps=6, lr=3e-3, precision="fp32", progress=False))
    assert run.tied_gradient
    result = run.fit()
    assert "forward" not in vars(run.raw_model.get_input_embeddings())
    card = json.loads((tmp_path / "sft" / "run_card.json").read_text())
    assert card["resolved"]["tied_embedding_gradient"] is True
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0], losses
    saved = LlamaForCausalLM.from_pretrained(result.out_dir)
    assert saved.get_output_embeddings().weight is saved.get_input_embeddings().weight
