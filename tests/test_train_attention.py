"""Per-document attention (no L x L mask) gives the loss and gradients of the dense block-diagonal mask, for any packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from chatloom.train import attention
from chatloom.train.attention import (
    NAME,
    bucket_length,
    document_attention,
    make_plan,
    restore_attention,
    use_training_attention,
)
from chatloom.train.data import IGNORE, attention_mask
from chatloom.train.loop import SupervisedLoss
from chatloom.train.models import build_model

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    m = build_model("tiny", VOCAB, seed=0)
    assert use_training_attention(m) and m.config._attn_implementation == NAME
    return m


def packed_batch(doc_lengths: list[list[int]], length: int, seed: int):
    """Rows of `length` tokens holding the given documents (then padding: one more run, unsupervised), as pack() makes
    them: position ids restart per document, segment ids count documents (-1 = padding)."""
    g = torch.Generator().manual_seed(seed)
    rows = len(doc_lengths)
    ids = torch.randint(0, VOCAB, (rows, length), generator=g)
    positions = torch.zeros(rows, length, dtype=torch.long)
    segments = torch.full((rows, length), -1, dtype=torch.long)
    targets = torch.full((rows, length), IGNORE, dtype=torch.long)
    for r, docs in enumerate(doc_lengths):
        at = 0
        for s, n in enumerate(docs):
            positions[r, at:at + n] = torch.arange(n)
            segments[r, at:at + n] = s
            targets[r, at:at + n - 1] = ids[r, at + 1:at + n]
            at += n
        positions[r, at:] = torch.arange(length - at)
    return ids, positions, segments, targets


def loss_and_grads(model, batch, dense=False, bf16=False, module=None):
    """Loss and flattened gradients of one forward/backward through `module` (default: SupervisedLoss(model, dense))."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = (module if module is not None else SupervisedLoss(model, dense=dense))(*batch)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def rows_strategy():
    def fill(length):
        return st.lists(st.integers(1, length), min_size=1, max_size=8).map(
            lambda docs: [d for i, d in enumerate(docs) if sum(docs[:i + 1]) <= length] or [length])
    return st.sampled_from([16, 48, 96]).flatmap(lambda length: st.tuples(st.just(length), st.lists(fill(length), min_size=1,
                                                                                          max_size=3)))


PATHS = {"buckets": (0, 0.6), "block mask": (10**9, 0.0)}  # (DENSE_UP_TO, DENSE_SHARE) that force each path


@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=10, deadline=None)
@given(shape=rows_strategy(), seed=st.integers(0, 2**16))
def test_documents_equal_the_dense_mask_in_float32(model, path, shape, seed):
    """Both paths (per-document buckets; one block mask built from the position ids) at any row length."""
    length, docs = shape
    batch = packed_batch(docs, length, seed)
    saved = attention.DENSE_UP_TO, attention.DENSE_SHARE
    attention.DENSE_UP_TO, attention.DENSE_SHARE = PATHS[path]
    try:
        plan = attention.make_plan(batch[1])
        assert plan.whole_rows or (plan.runs is None) == (path == "buckets")
        ours = loss_and_grads(model, batch, dense=False)
    finally:
        attention.DENSE_UP_TO, attention.DENSE_SHARE = saved
    dense = loss_and_grads(model, batch, dense=True)
    torch.testing.assert_close(ours[0], dense[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], dense[1], rtol=1e-5, atol=1e-5)


def test_long_row_of_short_documents_under_bf16_matches_the_dense_mask(model):
    assert attention.DENSE_UP_TO < 2000  # this row goes through the buckets
    rng = np.random.default_rng(0)
    docs = [[int(n) for n in rng.integers(5, 120, 30)]]
    length = sum(docs[0]) + 37
    batch = packed_batch(docs, length, 1)
    exact = loss_and_grads(model, batch, dense=True)
    dense = loss_and_grads(model, batch, dense=True, bf16=True)
    ours = loss_and_grads(model, batch, dense=False, bf16=True)
    assert abs(ours[0] - dense[0]) <= 2e-2 * abs(exact[0])  # both: bf16 matmuls, float32 attention core
    assert abs(ours[0] - exact[0]) <= abs(dense[0] - exact[0]) * 1.5 + 1e-2 * abs(exact[0])


def test_plan_partitions_the_tokens_into_buckets_of_bounded_padding(monkeypatch):
    monkeypatch.setattr(attention, "DENSE_UP_TO", 0)
    positions = torch.cat([torch.arange(n) for n in (5, 40, 17, 3, 1, 64)]).view(1, -1)
    plan = make_plan(positions.repeat(2, 1))
    slots = sum(b.gather.numel() for b in plan.buckets)
    source = plan.source.tolist()
    assert len(set(source)) == len(source) == 2 * positions.shape[1] and max(source) < slots  # one slot per token
    gathered = torch.cat([b.gather.reshape(-1) for b in plan.buckets])
    assert torch.equal(gathered[plan.source], torch.arange(len(source)))  # each token's slot reads that token
    runs = sum(int(b.gather.shape[0]) for b in plan.buckets)
    assert runs == 12
    for n in range(1, 5000):
        size = bucket_length(n)
        assert n <= size <= max(16, 1.5 * n)
    whole = make_plan(torch.arange(32).repeat(3, 1))  # one run per row: no gather at all
    assert whole.whole_rows and not whole.buckets


def test_the_block_mask_only_where_the_runs_fill_the_rows():
    """Short documents in a row go to the buckets (the mask would do the whole L x L work); runs that fill the row keep
    one masked call; rows longer than DENSE_UP_TO always go to the buckets."""
    short = torch.cat([torch.arange(n) for n in (20, 35, 60, 41, 30, 70)]).view(1, -1)  # 256 tokens, squares ~0.2
    assert make_plan(short).runs is None and make_plan(short).buckets
    filled = torch.cat([torch.arange(n) for n in (200, 56)]).view(1, -1)  # bucket squares 256^2 + 64^2 > 0.6 * 256^2
    assert make_plan(filled).runs is not None and not make_plan(filled).buckets
    long = torch.cat([torch.arange(n) for n in (1500, 548)]).view(1, -1)
    assert long.shape[1] > attention.DENSE_UP_TO and make_plan(long).runs is None


@pytest.mark.parametrize("window", [None, 3, 50])
@pytest.mark.parametrize("path", list(PATHS))
def test_document_attention_with_gqa_and_sliding_window_equals_a_masked_reference(window, path, monkeypatch):
    monkeypatch.setattr(attention, "DENSE_UP_TO", PATHS[path][0])
    monkeypatch.setattr(attention, "DENSE_SHARE", PATHS[path][1])
    g = torch.Generator().manual_seed(2)
    docs = [[7, 30, 2], [39]]
    length = 40
    _, positions, segments, _ = packed_batch(docs, length, 0)
    q = torch.randn(2, 4, length, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, length, 8, generator=g, dtype=torch.float64) for _ in range(2))
    got = document_attention(q, k, v, positions, scale=0.3, window=window)
    allowed = attention_mask(segments)
    if window:
        i = torch.arange(length)
        allowed = allowed & ((i[:, None] - i[None, :]) < window)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=allowed,
                                          scale=0.3).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_generation_with_a_cache_falls_back_to_sdpa(model):
    """A cached decode step (query shorter than the keys) is not a packed row: plain SDPA, the same tokens."""
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        restore_attention(model)
        plain = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        use_training_attention(model)
    assert torch.equal(ours, plain)
