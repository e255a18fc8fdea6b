"""Attention for training packed rows: cost follows the documents, not the row; float32 core under CPU bf16 autocast.

Packed rows carry per-document position ids (0, 1, ... restarting at every example; padding is one more run). Instead
of a dense (B, 1, L, L) block-diagonal mask, "chatloom_sdpa" cuts the rows into document runs where the position ids
restart and groups the runs by length into a few buckets (lengths rounded up to 2^k or 1.5 * 2^k, so padding inside a
bucket stays under half the work), each one SDPA call with `is_causal=True`; outputs go back in row order. A row of
16,384 tokens of short conversations then costs what sixteen rows of 1,024 cost. Padding a run at its end never
changes it: under the causal mask no real token sees the padded slots, and their outputs are dropped (no gradient).
Only where the buckets would do most of the rows' L x L work anyway (runs that fill rows of at most `DENSE_UP_TO`
tokens: bucket squares >= `DENSE_SHARE` of the rows') one SDPA call with a block-diagonal mask built from the runs
is cheaper than the gathers and the several calls. Measured (fwd+bwd, 2-core AMD EPYC, float32 core): documents of
20-120 tokens in rows of 256 take 0.70-0.88x the block-mask time as buckets (SmolLM2's 9x64 heads: 0.83x), in rows
of 1,024 0.19-0.24x; runs that fill rows of 256 take 1.2-1.8x (so those keep the mask).

On CPU under bf16 autocast the attention core runs in float32: PyTorch's CPU flash kernel is slower in bf16 than in
fp32 for the small heads chatloom trains (fwd+bwd of one `small` layer at [16, 8, 256, 32]: 58 ms in bf16, 35 ms in
fp32 including the casts), and float32 is the more exact. On CUDA the buckets go to SDPA's flash / memory-efficient
kernels in the autocast dtype (no mask, so they apply); with `flash-attn` installed `use_training_attention` picks
transformers' `flash_attention_2` instead, whose variable-length kernel reads the same position ids without padding.

A model given an explicit 4-D mask (the dense reference in tests, `SupervisedLoss(..., dense=True)`) gets today's SDPA
with that mask (float32 core on CPU bf16). Layers with a sliding window mask each bucket longer than the window with a
banded causal mask. Registered with transformers' `AttentionInterface` for the duration of a run; exported models keep
"sdpa".
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NAME = "chatloom_sdpa"
#: rows up to this length whose runs would leave the buckets at least `DENSE_SHARE` of the rows' L x L work use one
#: SDPA call with a block-diagonal mask instead (see the module doc for the measurements)
DENSE_UP_TO = 1024
DENSE_SHARE = 0.6
#: implementations that take packed rows as position ids alone (no mask): ours and transformers' varlen flash paths
MASK_FREE = (NAME, "flash_attention_2", "flash_attention_3")


# ---------------------------------------------------------------------------------------------------- document runs
@dataclass
class Bucket:
    gather: torch.Tensor  # (n, P) flat token indices (B * L layout) of n runs padded to P; padded slots read token 0
    pad: torch.Tensor | None  # (n * P, 1, 1) bool, True at padded slots (None: no padding in this bucket)


@dataclass
class Plan:
    """How a (B, L) batch of position ids splits into document runs, grouped into buckets of similar length."""

    shape: tuple[int, int]
    buckets: list[Bucket]
    source: torch.Tensor | None  # for each token (B * L order): its slot in the buckets' slots laid end to end; None:
    # one run per row (no gather needed)
    runs: torch.Tensor | None = None  # rows the runs fill (see DENSE_SHARE): (B, L) run ids, for a block-diagonal mask
    masks: dict | None = None  # additive masks built from `runs`, by dtype

    @property
    def whole_rows(self) -> bool:
        return self.source is None and self.runs is None

    def mask(self, dtype: torch.dtype, window: int | None) -> torch.Tensor:
        """(B, 1, L, L) block-diagonal causal mask of the rows."""
        key = (dtype, window)
        if key not in self.masks:
            self.masks[key] = block_mask(self.runs, dtype, window)
        return self.masks[key]


def block_mask(runs: torch.Tensor, dtype: torch.dtype, window: int | None) -> torch.Tensor:
    """(N, 1, P, P) additive causal mask that keeps each slot within its run of `runs` (N, P) (and within `window`):
    SDPA's CPU backward is ~2x faster with an additive mask than with a boolean one."""
    length = runs.shape[1]
    i = torch.arange(length, device=runs.device)
    allowed = i[None, :] <= i[:, None]
    if window:
        allowed = allowed & (i[:, None] - i[None, :] < window)
    allowed = (runs[:, :, None] == runs[:, None, :]) & allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)[:, None]


def bucket_length(n: int) -> int:
    """The smallest 2^k or 3 * 2^(k-1) (>= 16) that holds n: padding adds at most half a run (at least 16 slots)."""
    size = 16
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size // 3 * 4
    return size


def document_runs(position_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the runs in the flattened (B * L) token order: a run starts at every row start and wherever
    a position id is not its predecessor + 1."""
    pos = position_ids.detach().cpu().numpy()
    b, length = pos.shape
    start = np.ones((b, length), dtype=bool)
    start[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    starts = np.flatnonzero(start.reshape(-1))
    lengths = np.diff(np.append(starts, b * length))
    return starts, lengths


def make_plan(position_ids: torch.Tensor) -> Plan:
    b, length = position_ids.shape
    starts, lengths = document_runs(position_ids)
    device = position_ids.device
    if len(starts) == b:  # one run per row (unpacked rows, pretraining chunks that fill the row): plain causal SDPA
        return Plan((b, length), [], None)
    sizes = np.minimum([bucket_length(int(n)) for n in lengths], length)
    if length <= DENSE_UP_TO and float((sizes.astype(np.float64) ** 2).sum()) >= DENSE_SHARE * b * length ** 2:
        runs = np.zeros(b * length, dtype=np.int64)
        runs[starts] = 1
        return Plan((b, length), [], None, torch.from_numpy(np.cumsum(runs).reshape(b, length)).to(device), {})
    buckets, source, slots = [], np.empty(b * length, dtype=np.int64), 0
    for size in np.unique(sizes):
        members = np.flatnonzero(sizes == size)
        offs = np.arange(size)
        real = offs[None, :] < lengths[members][:, None]
        tokens = starts[members][:, None] + offs[None, :]
        gather = np.where(real, tokens, 0)
        source[tokens[real]] = slots + np.flatnonzero(real.reshape(-1))
        slots += gather.size
        pad = None if real.all() else torch.from_numpy(~real.reshape(-1, 1, 1)).to(device)
        buckets.append(Bucket(torch.from_numpy(gather).to(device), pad))
    return Plan((b, length), buckets, torch.from_numpy(source).to(device))


_cache: tuple[weakref.ref, tuple, Plan] | None = None


def plan_for(position_ids: torch.Tensor, batch: int) -> Plan:
    """The plan of this forward's position ids (every layer gets the same tensor: computed once, kept by weak ref)."""
    global _cache
    if position_ids.shape[0] != batch:
        position_ids = position_ids.expand(batch, -1)
    if _cache is not None and _cache[0]() is position_ids and _cache[1] == (DENSE_UP_TO, DENSE_SHARE):
        return _cache[2]
    plan = make_plan(position_ids)
    _cache = (weakref.ref(position_ids), (DENSE_UP_TO, DENSE_SHARE), plan)
    return plan


# ---------------------------------------------------------------------------------------------------- the kernel
def _cpu_bf16(query, key, value) -> bool:
    return query.device.type == "cpu" and (torch.bfloat16 in (query.dtype, key.dtype, value.dtype) or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))


def _sdpa(q, k, v, *, scale, dropout, window):
    """Causal SDPA over (n, H, P, D) with GQA; a sliding window shorter than P becomes a banded boolean mask."""
    p = q.shape[2]
    gqa = k.shape[1] != q.shape[1]
    if window and window < p:
        i = torch.arange(p, device=q.device)
        band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=dropout, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale, enable_gqa=gqa)


def _to_runs(flat: torch.Tensor, plan: Plan) -> list[torch.Tensor]:
    """(B * L, H, D) tokens -> per bucket (n * P, H, D) runs, padded slots zero."""
    out = []
    for b in plan.buckets:
        x = flat.index_select(0, b.gather.reshape(-1))
        out.append(x.masked_fill_(b.pad, 0) if b.pad is not None else x)
    return out


def _from_runs(pieces, plan: Plan) -> torch.Tensor:
    """Per bucket (n * P, H, D) runs -> (B * L, H, D) tokens in row order (padded slots dropped)."""
    return torch.cat(list(pieces)).index_select(0, plan.source)


class _ToRuns(torch.autograd.Function):
    """Gather with a gather for a backward: every token is in exactly one real slot, and padded slots get no gradient
    (nothing reads their outputs, and under the causal mask no real query reads their keys), so the gradient of the
    gather is the inverse gather. Autograd's own backward of `index_select` is a scatter-add, 10x slower on CPU."""

    @staticmethod
    def forward(ctx, flat, plan):
        ctx.plan, ctx.shape, ctx.dtype = plan, flat.shape, flat.dtype
        return tuple(_to_runs(flat, plan))

    @staticmethod
    def backward(ctx, *grads):
        grads = [g if g is not None else torch.zeros(b.gather.numel(), *ctx.shape[1:], dtype=ctx.dtype,
                                                     device=b.gather.device)
                 for g, b in zip(grads, ctx.plan.buckets, strict=True)]
        return _from_runs(grads, ctx.plan), None


class _FromRuns(torch.autograd.Function):
    """The inverse of `_ToRuns`; its backward gives padded slots a zero gradient (they must not feed the keys)."""

    @staticmethod
    def forward(ctx, plan, *pieces):
        ctx.plan = plan
        return _from_runs(pieces, plan)

    @staticmethod
    def backward(ctx, grad):
        return (None, *_to_runs(grad.contiguous(), ctx.plan))


@torch.compiler.disable  # under torch.compile: eager (its plan differs per batch; traced, every batch recompiled)
def document_attention(query, key, value, position_ids, *, scale=None, dropout=0.0, window=None):
    """Causal attention within each document run of `position_ids`. query (B, H, L, D), key/value (B, Hkv, L, D);
    returns (B, L, H, D) like transformers' attention functions."""
    b, h, length, d = query.shape
    plan = plan_for(position_ids, b)
    if plan.whole_rows:
        return _sdpa(query, key, value, scale=scale, dropout=dropout, window=window).transpose(1, 2)
    if plan.runs is not None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=plan.mask(query.dtype, window),
                                              dropout_p=dropout, scale=scale,
                                              enable_gqa=key.shape[1] != query.shape[1]).transpose(1, 2)
    runs = [_ToRuns.apply(x.transpose(1, 2).reshape(b * length, x.shape[1], d), plan) for x in (query, key, value)]
    pieces = []
    for bucket, q, k, v in zip(plan.buckets, *runs, strict=True):
        n, size = bucket.gather.shape

        def heads(x, n=n, size=size):
            return x.view(n, size, x.shape[1], d).transpose(1, 2)

        out = _sdpa(heads(q), heads(k), heads(v), scale=scale, dropout=dropout, window=window)
        pieces.append(out.transpose(1, 2).reshape(n * size, h, d))
    return _FromRuns.apply(plan, *pieces).view(b, length, h, d)


def training_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function: per-document runs from `position_ids` when there is no mask, else SDPA with
    the given mask; the core in float32 under CPU bf16 autocast."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    low = _cpu_bf16(query, key, value)
    if attention_mask is not None or kwargs.get("position_ids") is None or query.shape[2] != key.shape[2]:
        if not low:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        mask = attention_mask.float() if attention_mask is not None and attention_mask.is_floating_point() else \
            attention_mask
        with torch.autocast("cpu", enabled=False):
            out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, **kwargs)
        return out.to(torch.bfloat16), weights
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    opts = dict(scale=kwargs.get("scaling"), dropout=kwargs.get("dropout", 0.0) if module.training else 0.0,
                window=window)
    if low:
        with torch.autocast("cpu", enabled=False):
            out = document_attention(query.float(), key.float(), value.float(), kwargs["position_ids"], **opts)
        return out.to(torch.bfloat16), None
    return document_attention(query, key, value, kwargs["position_ids"], **opts), None


cpu_fp32_sdpa = training_attention  # the earlier name (the mask path is the same computation)


def supports_documents(config) -> bool:
    """Whether this architecture's attention is plain scaled-dot-product (no logit soft-capping, no sink logits)."""
    return not any(getattr(config, name, None) for name in ("attn_logit_softcapping", "attention_sink", "sinks"))


def use_training_attention(model, device: torch.device | None = None, precision: str | None = None) -> bool:
    """Switch a transformers model that uses SDPA to per-document attention: "chatloom_sdpa", or on CUDA in bf16/fp16
    with `flash-attn` installed, transformers' "flash_attention_2" (varlen via position ids). Returns whether it
    switched; `restore_attention` switches back before the model is saved."""
    from transformers import AttentionInterface

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or not supports_documents(config):
        return False
    name = NAME
    if device is not None and device.type == "cuda" and precision in ("bf16", "fp16"):
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            name = "flash_attention_2"
    AttentionInterface.register(NAME, training_attention)
    try:
        model.set_attn_implementation(name)
    except (ValueError, AttributeError, ImportError):
        return False
    return getattr(config, "_attn_implementation", None) == name


def attention_name(model) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def restore_attention(model) -> None:
    if attention_name(model) in MASK_FREE:
        model.set_attn_implementation("sdpa")
