"""The tied input embedding's gradient added straight into the output head's.

When the input embedding and the output head share one matrix, stock autograd builds its gradient twice a step: the
head's part (from `fused_loss`), and the embedding's part in a fresh zero-filled [vocab, dim] float32 tensor that is then
added to it. On SmolLM2-135M (49k x 576) that second tensor is 113 MB of freshly mapped pages every step: its zero-fill
took ~95 ms of a ~1 s bf16 step (page faults), the add another ~7 ms. Here the loss hands the head's gradient of the
running backward pass to the embedding's backward (`GradientHandoff`), which adds its rows into it (`index_add_`) and
returns none of its own: one [vocab, dim] tensor a step instead of two, and no zero-fill. The sum is the same, up to the
order of float additions. Applies to an `nn.Embedding` tied to a fusable head, plain or scaled by an `embed_scale`
buffer (Gemma 3: a 262k x 640 matrix, 671 MB a step), after checking on a few ids that it computes what the module's own
forward does; anything else keeps stock autograd.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


class GradientHandoff:
    """The output head's weight gradient of the backward pass under way, until the tied embedding's backward takes it."""

    def __init__(self):
        self._weight = self._grad = None

    def give(self, weight: torch.Tensor, grad: torch.Tensor) -> None:
        self._weight, self._grad = weight, grad

    def take(self, weight: torch.Tensor) -> torch.Tensor | None:
        grad, given_for = self._grad, self._weight
        self._weight = self._grad = None  # the engine must hold the only reference when it accumulates the gradient
        return grad if given_for is weight else None


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx, handoff):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx, ctx.handoff = weight, padding_idx, handoff
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        weight, padding_idx = ctx.weight, ctx.padding_idx
        into = ctx.handoff.take(weight)
        if into is None:  # the head's gradient did not come first (not fused, or not this weight): stock autograd
            return None, torch.ops.aten.embedding_dense_backward(
                grad_out, ids, weight.shape[0], -1 if padding_idx is None else padding_idx, False), None, None
        rows, grads = ids.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1])
        if padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            keep = rows != padding_idx
            rows, grads = rows[keep], grads[keep]
        into.index_add_(0, rows, grads.to(into.dtype))
        return None, None, None, None


def _forward(module: nn.Embedding, handoff: GradientHandoff, ids: torch.Tensor) -> torch.Tensor:
    out = _Embedding.apply(ids, module.weight, module.padding_idx, handoff)
    scale = getattr(module, "embed_scale", None)
    return out if scale is None else out * scale.to(module.weight.dtype)


def _same_as_module(module: nn.Embedding, handoff: GradientHandoff) -> bool:
    ids = torch.arange(min(4, module.num_embeddings), device=module.weight.device)[None]
    with torch.no_grad():
        return torch.equal(_forward(module, handoff, ids), type(module).forward(module, ids))


def tie_gradient(model: nn.Module) -> GradientHandoff | None:
    """Route the input embedding's gradient into the head's when the model's embedding is an `nn.Embedding` (plain or
    with an `embed_scale`) whose matrix is the output head's: returns the handoff for the loss to fill (give it to
    `SupervisedLoss`), or None where stock autograd stays. `untie_gradient` undoes it."""
    handoff = GradientHandoff()
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    known = type(emb) is nn.Embedding or (isinstance(emb, nn.Embedding) and torch.is_tensor(getattr(emb, "embed_scale", None)))
    if not (known and emb.max_norm is None and not emb.scale_grad_by_freq and not emb.sparse and head is not None
            and head.weight is emb.weight and type(emb.weight) is nn.Parameter and emb.weight.requires_grad
            and _same_as_module(emb, handoff)):
        return None
    emb.forward = functools.partial(_forward, emb, handoff)
    return handoff


def untie_gradient(model: nn.Module) -> None:
    emb = model.get_input_embeddings()
    if isinstance(emb.__dict__.get("forward"), functools.partial):
        del emb.forward
