"""A large vocabulary (Gemma 3: 262k rows, tied to the input embedding) trains through the same exact paths, made fast:
the fused linear + cross-entropy in chunks of at least `MIN_ROWS` rows with reused buffers, and the fused AdamW kernel
(`loop.adamw`).
Each is checked against the straightforward computation (full logits + `F.cross_entropy`, the multi-tensor AdamW) on a
tiny model with a large-ish vocabulary built in code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatloom.train import fused_loss
from chatloom.train.config import TrainConfig
from chatloom.train.data import IGNORE
from chatloom.train.fused_loss import chunk_rows, linear_cross_entropy
from chatloom.train.loop import SupervisedLoss, adamw

VOCAB = 40_000  # several 256-row chunks' worth of float32 logits, still small enough for the reference's full logits


def reference(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def loss_and_grads(fn, hidden, weight, targets, scale=0.37):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


def data(rows, vocab=VOCAB, dim=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, dim, generator=g), torch.randn(vocab, dim, generator=g) * 0.2,
            torch.randint(0, vocab, (rows,), generator=g))


def test_a_large_vocabulary_gets_chunks_of_at_least_min_rows():
    assert chunk_rows(262_144) == fused_loss.MIN_ROWS == 256  # not 2**21 // 262144 = 8 rows per weight pass
    assert chunk_rows(8_000) == fused_loss.CHUNK_ELEMENTS // 8_000  # a small vocabulary keeps cache-sized chunks


@pytest.mark.parametrize("rows", [1, 255, 256, 700])  # less than one chunk, one, and 256 + 256 + 188
def test_chunked_loss_at_a_large_vocabulary_equals_cross_entropy_in_float32(rows):
    hidden, weight, targets = data(rows)
    got = loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    want = loss_and_grads(reference, hidden, weight, targets)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_loss_under_bf16_matches_one_chunk_and_the_autocast_reference(monkeypatch):
    hidden, weight, targets = data(700)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = loss_and_grads(linear_cross_entropy, hidden, weight, targets)
        want = loss_and_grads(reference, hidden, weight, targets)
        monkeypatch.setattr(fused_loss, "MIN_ROWS", 10_000)
        whole = loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    assert chunked[1].dtype == hidden.dtype and chunked[2].dtype == weight.dtype
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-6, atol=0)  # per-row float32: only the sum's order
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-6, atol=1e-7)
    # the weight gradient: a float32 sum of bf16-rounded chunk products vs one bf16-rounded product (2**-8 relative)
    assert (chunked[2] - whole[2]).norm() <= 2**-8 * whole[2].norm()
    torch.testing.assert_close(chunked[0], want[0], rtol=1e-4, atol=1e-2)
    for a, b in zip(chunked[1:], want[1:], strict=True):  # both round the softmax gradient to bf16 before the matmuls
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_backward_twice_is_refused_not_silently_rescaled():
    hidden, weight, targets = data(8, vocab=50)
    w = weight.requires_grad_()
    loss = linear_cross_entropy(hidden, w, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def steps_through_a_workspace(hidden, weight, targets, autocast, steps=3, micro_batches=1, trainable=True):
    """The loop's use of a workspace: each step's micro-batches, then an update of the weight (a kept cast of the
    weight must be refreshed), then `recycle` in place of zero_grad. Yields each step's (loss, hidden grad, weight
    grad, the reference's three) and the workspace."""
    workspace, w = fused_loss.Workspace(), weight.clone().requires_grad_(trainable)
    for _ in range(steps):
        got, want = [], []
        for part in torch.arange(len(targets)).chunk(micro_batches):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                got.append(loss_and_grads(lambda h, _, t: linear_cross_entropy(h, w, t, workspace=workspace),
                                          hidden[part], w.detach(), targets[part]))
                want.append(loss_and_grads(reference, hidden[part], w.detach(), targets[part]))
        weight_grad = w.grad.clone() if w.grad is not None else None
        yield [sum(g[0] for g in got), torch.cat([g[1] for g in got]), weight_grad,
               sum(g[0] for g in want), torch.cat([g[1] for g in want]), sum(g[2] for g in want)], w, workspace
        with torch.no_grad():
            w.sub_(0.5 * w.grad if w.grad is not None else 0.05 * torch.randn_like(w))
        workspace.recycle(w)
        assert w.grad is None


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("keep_bytes", [0, fused_loss.KEEP_BYTES])
def test_a_workspace_keeps_the_buffers_and_the_gradient_and_changes_no_result(autocast, micro_batches, keep_bytes,
                                                                             monkeypatch):
    """Step after step through one workspace, the loss and both gradients equal full logits + `F.cross_entropy` on
    the weight of that step; the weight's gradient is written into the previous step's tensor (autograd adopts it:
    no copy), and between calls the workspace holds exactly the forward buffers of `KEEP_BYTES` and up (all of them,
    or at the default none of this small model's)."""
    monkeypatch.setattr(fused_loss, "KEEP_BYTES", keep_bytes)
    hidden, weight, targets = data(700)
    tol = dict(rtol=1e-5, atol=1e-5) if not autocast else dict(rtol=2e-2, atol=2e-2)
    grads_at = []
    for (loss, gh, gw, want_loss, want_gh, want_gw), w, workspace in steps_through_a_workspace(
            hidden, weight, targets, autocast, micro_batches=micro_batches):
        torch.testing.assert_close(loss, want_loss, rtol=1e-5 if not autocast else 1e-4, atol=1e-2)
        torch.testing.assert_close(gh, want_gh, **tol)
        torch.testing.assert_close(gw, want_gw, **tol)
        grads_at.append(w.grad.data_ptr())
        rows = fused_loss.chunk_rows(VOCAB)
        compute = 2 if autocast else 4  # bytes per logit; the log-probabilities are float32, the cast bf16
        sizes = [rows * VOCAB * compute, rows * VOCAB * 4] + ([w.numel() * 2] if autocast else [])
        assert workspace.nbytes() == sum(b for b in sizes if b >= keep_bytes)  # the gradient is autograd's until recycled
    if micro_batches == 1:  # every step writes into the first step's gradient tensor
        assert len(set(grads_at)) == 1
    else:  # the second micro-batch's part is added into it (a fresh one is needed while the first is in .grad)
        assert grads_at[1] == grads_at[2]


def test_a_frozen_weight_gets_no_gradient_and_the_workspace_keeps_none():
    """A frozen head (LoRA): only the hidden states' gradient is computed, the weight's is skipped."""
    hidden, weight, targets = data(300)
    for (loss, gh, gw, want_loss, want_gh, _), w, workspace in steps_through_a_workspace(
            hidden, weight, targets, autocast=False, steps=2, trainable=False):
        assert gw is None and w.grad is None
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gh, want_gh, rtol=1e-5, atol=1e-5)
        assert workspace.nbytes() == 0  # no gradient (and no forward buffer of this size)


def tied_model(vocab=VOCAB, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                         tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def batch(rows=4, length=160, vocab=VOCAB, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    segments = torch.zeros_like(ids)
    segments[:, length // 2:] = 1
    positions = torch.arange(length).repeat(rows, 1)
    positions[:, length // 2:] -= length // 2
    targets = ids.roll(-1, 1)
    targets[:, : length // 4] = IGNORE  # a prompt: unsupervised
    targets[:, length // 2 - 1] = IGNORE  # no target across the packed boundary
    return ids, positions, segments, targets


def straightforward_loss(model, ids, positions, segments, targets):
    """The whole model's logits, then cross-entropy over the supervised positions (dense block-diagonal mask)."""
    from chatloom.train.data import attention_mask

    logits = model(input_ids=ids, attention_mask=attention_mask(segments, torch.float32), position_ids=positions,
                   use_cache=False).logits
    keep = targets != IGNORE
    return F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")


def test_tied_large_vocabulary_model_loss_gradients_and_adamw_update_equal_the_straightforward_path():
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, data=["x.jsonl"])
    ours, ref = tied_model(), tied_model()
    assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight  # tied, like Gemma 3
    b = batch()
    supervised = int((b[3] != IGNORE).sum())
    assert supervised > fused_loss.MIN_ROWS  # the loss runs in more than one chunk
    loss = SupervisedLoss(ours)(*b)
    (loss / supervised).backward()
    want = straightforward_loss(ref, *b)
    (want / supervised).backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-4)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    params = list(ours.parameters())
    fused = adamw([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                  torch.device("cpu"), lr=1e-2, betas=(cfg.beta1, cfg.beta2))
    assert fused.defaults["fused"]
    params = list(ref.parameters())
    plain = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                               {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=(cfg.beta1, cfg.beta2), foreach=False)
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):  # the optimizers alone: the same start
        q.data.copy_(p.data)
        q.grad.copy_(p.grad)
    for step in range(2):  # the second step uses the moments of the first
        fused.step()
        plain.step()
        if step == 0:  # the second step's gradient: different, the same for both
            for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
                p.grad.mul_(-0.5).add_(1e-3)
                q.grad.copy_(p.grad)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
