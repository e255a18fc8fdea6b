"""The training loop's faster pieces compute what the plain ones do: the chunked linear + cross-entropy, the float32 SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from chatloom.train import fused_loss
from chatloom.train.attention import NAME, restore_attention, use_training_attention
from chatloom.train.fused_loss import linear_cross_entropy
from chatloom.train.loop import SupervisedLoss
from chatloom.train.models import build_model


def reference(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def loss_and_grads(fn, hidden, weight, targets):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets)
    (loss * 0.37).backward()  # a non-unit upstream gradient must scale both gradients
    return loss.detach(), h.grad, w.grad


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 70), vocab=st.integers(2, 300), dim=st.integers(1, 24), chunk=st.integers(1, 2000),
       seed=st.integers(0, 2**16))
def test_fused_loss_equals_cross_entropy_in_float32(rows, vocab, dim, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=g, dtype=torch.float64).float()
    weight = torch.randn(vocab, dim, generator=g).float()
    targets = torch.randint(0, vocab, (rows,), generator=g)
    saved = fused_loss.CHUNK_ELEMENTS, fused_loss.MIN_ROWS
    fused_loss.CHUNK_ELEMENTS, fused_loss.MIN_ROWS = chunk, 1  # rows per chunk = chunk // vocab (at least 1): one
    try:  # chunk, several, one per row
        got = loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    finally:
        fused_loss.CHUNK_ELEMENTS, fused_loss.MIN_ROWS = saved
    want = loss_and_grads(reference, hidden, weight, targets)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1 << 24, 40_000, 1000])  # one chunk (the default), several, one row per chunk
def test_fused_loss_under_bf16_autocast_matches_the_autocast_reference(chunk, monkeypatch):
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(fused_loss, "MIN_ROWS", 1)  # the chunk sizes above, not the large-vocabulary floor
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 64, generator=g)
    weight = torch.randn(1000, 64, generator=g) * 0.1
    targets = torch.randint(0, 1000, (300,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads(linear_cross_entropy, hidden, weight, targets)
        want = loss_and_grads(reference, hidden, weight, targets)
    assert got[0].dtype == torch.float32 and got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-3)
    for a, b in zip(got[1:], want[1:], strict=True):  # both round the softmax gradient to bf16 before the matmuls
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_fused_loss_without_grad_and_without_rows():
    weight = torch.randn(50, 8, requires_grad=True)
    hidden, targets = torch.randn(9, 8), torch.randint(0, 50, (9,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets), reference(hidden, weight, targets))
    empty = linear_cross_entropy(torch.randn(0, 8, requires_grad=True), weight, torch.zeros(0, dtype=torch.long))
    empty.backward()
    assert empty.item() == 0.0 and torch.count_nonzero(weight.grad) == 0


def batch(rows=3, length=40, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    segments = torch.zeros_like(ids)
    segments[:, length // 2:] = 1  # two packed examples per row
    positions = torch.arange(length).repeat(rows, 1)
    positions[:, length // 2:] -= length // 2
    return ids, positions, segments, ids.roll(-1, 1)


def model_loss(model, bf16):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = SupervisedLoss(model)(*batch())
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_training_attention_gives_the_sdpa_results_and_is_restored():
    model = build_model("tiny", 300, seed=0)
    exact = model_loss(model, bf16=False)
    sdpa_bf16 = model_loss(model, bf16=True)
    assert use_training_attention(model) and model.config._attn_implementation == NAME
    fp32_core = model_loss(model, bf16=False)
    assert fp32_core[0] == pytest.approx(exact[0], rel=1e-6)  # float32 model: the same computation
    torch.testing.assert_close(fp32_core[1], exact[1], rtol=1e-5, atol=1e-6)
    ours_bf16 = model_loss(model, bf16=True)
    assert ours_bf16[0] == pytest.approx(exact[0], rel=2e-2)
    # bf16 matmuls with a float32 attention core are at least as close to the exact loss as all-bf16 SDPA
    assert abs(ours_bf16[0] - exact[0]) <= abs(sdpa_bf16[0] - exact[0]) * 1.5 + 1e-3
    restore_attention(model)
    assert model.config._attn_implementation == "sdpa"
    assert not use_training_attention(torch.nn.Linear(2, 2))  # not a transformers model: left alone


def test_training_attention_core_is_float32_sdpa_of_the_bf16_inputs():
    from chatloom.train.attention import cpu_fp32_sdpa

    model = build_model("tiny", 300, seed=0)
    layer = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 10, 16, generator=g).bfloat16()
    kv = torch.randn(2, 2, 10, 16, generator=g).bfloat16()
    mask = torch.zeros(2, 1, 10, 10).masked_fill_(~torch.ones(10, 10, dtype=torch.bool).tril(), -1e30).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = cpu_fp32_sdpa(layer, q, kv, kv, mask, scaling=0.25)
    want = F.scaled_dot_product_attention(q.float(), kv.float().repeat_interleave(2, 1), kv.float().repeat_interleave(2, 1),
                                          attn_mask=mask.float(), scale=0.25).transpose(1, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want.bfloat16().float(), rtol=0, atol=0)


def test_the_loop_optimizer_steps_like_the_reference_adamw():
    """The loop's AdamW (fused on CPU) moves the weights as PyTorch's reference (single-tensor) AdamW does."""
    from chatloom.train.loop import adamw

    models = [build_model("tiny", 300, seed=0) for _ in range(2)]
    groups = [[{"params": [p for p in m.parameters() if p.ndim >= 2], "weight_decay": 0.1},
               {"params": [p for p in m.parameters() if p.ndim < 2], "weight_decay": 0.0}] for m in models]
    ours = adamw(groups[0], torch.device("cpu"), lr=3e-3, betas=(0.9, 0.95))
    assert ours.defaults["fused"]
    ref = torch.optim.AdamW(groups[1], lr=3e-3, betas=(0.9, 0.95), foreach=False)
    for step in range(4):
        for model, opt in zip(models, (ours, ref), strict=True):
            opt.zero_grad(set_to_none=True)
            SupervisedLoss(model)(*batch(seed=step)).backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_norm", [0.05, 1e3, 0.0])  # clipping, a bound never reached, no clipping
def test_clipping_inside_the_fused_optimizer_equals_clip_grad_norm_then_step(max_norm):
    """`clipped_step` hands the clip to the fused AdamW as its gradient divisor; the reference clips the gradients with
    `clip_grad_norm_` and steps PyTorch's single-tensor AdamW. Same weights after four steps, same norms."""
    from chatloom.train.loop import adamw, clipped_step

    models = [build_model("tiny", 300, seed=0) for _ in range(2)]
    ours = adamw(list(models[0].parameters()), torch.device("cpu"), lr=3e-3, weight_decay=0.1)
    ref = torch.optim.AdamW(models[1].parameters(), lr=3e-3, weight_decay=0.1, foreach=False)
    assert ours.defaults["fused"] and not ref.defaults["fused"]
    for step in range(4):
        norms = []
        for model, opt in zip(models, (ours, ref), strict=True):
            opt.zero_grad(set_to_none=True)
            SupervisedLoss(model)(*batch(seed=step)).backward()
            params = list(model.parameters())
            if opt is ours:
                norms.append(clipped_step(opt, params, max_norm))
            else:
                norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm) if max_norm > 0 else torch.zeros(()))
                opt.step()
        torch.testing.assert_close(norms[0], norms[1], rtol=1e-5, atol=0)
        if max_norm == 0.05:
            assert norms[0] > 0.05  # the clip is taken
        assert not hasattr(ours, "grad_scale")
    # clipped, gradient / divisor and clip_grad_norm_'s gradient * multiplier differ in the last bit, which Adam's
    # normalisation magnifies where a gradient is near zero: a few 1e-6 of weights that moved ~1e-2
    atol = 1e-5 if max_norm == 0.05 else 1e-6
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)


def test_resuming_keeps_this_process_optimizer_kernel():
    """A checkpoint saved by a non-fused AdamW (FSDP's) resumed by one CPU process: the state is loaded, the fused kernel
    the loop chose for this process is kept (loading param groups would otherwise turn it off), and it steps."""
    from chatloom.train import sharding
    from chatloom.train.loop import adamw

    model = build_model("tiny", 300, seed=0)
    saver = torch.optim.AdamW(model.parameters(), lr=1e-3)
    SupervisedLoss(model)(*batch(seed=0)).backward()
    saver.step()
    state = sharding.full_optimizer_state(model, saver)
    assert not any(g["fused"] for g in state["param_groups"])
    saver.zero_grad(set_to_none=True)  # as a resuming process has them
    ours = adamw(list(model.parameters()), torch.device("cpu"), lr=1e-3)
    sharding.load_full_state(model, ours, sharding.full_model_state(model), state)
    assert all(g["fused"] for g in ours.param_groups)
    for p in model.parameters():  # the saved moments, not a fresh state
        torch.testing.assert_close(ours.state[p]["exp_avg"], saver.state[p]["exp_avg"], rtol=0, atol=0)
    before = [p.detach().clone() for p in model.parameters()]
    SupervisedLoss(model)(*batch(seed=1)).backward()
    ours.step()  # through the fused kernel
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_bf16_training_loss_and_gradients_stay_near_float32():
    """A whole tiny model under bf16 autocast (per-document attention, fused loss in several chunks) against float32."""
    model = build_model("tiny", 300, seed=0)
    use_training_attention(model)
    saved = fused_loss.CHUNK_ELEMENTS, fused_loss.MIN_ROWS
    fused_loss.CHUNK_ELEMENTS, fused_loss.MIN_ROWS = 300 * 7, 1  # 7 rows per chunk: the bf16 product is added into
    try:  # the float32 gradient
        exact, low = model_loss(model, bf16=False), model_loss(model, bf16=True)
    finally:
        fused_loss.CHUNK_ELEMENTS, fused_loss.MIN_ROWS = saved
        restore_attention(model)
    assert low[0] == pytest.approx(exact[0], rel=1e-2)
    cos = F.cosine_similarity(low[1], exact[1], dim=0).item()
    assert cos > 0.995, cos
