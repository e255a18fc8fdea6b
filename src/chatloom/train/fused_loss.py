"""The output projection and cross-entropy as one operation, in row chunks.

On a small model the vocabulary projection is the largest matmul, and the usual path (logits for every row, upcast to
float32, log-softmax, its backward, downcast) spends more time moving the [rows, vocab] tensors through memory than
multiplying: 37% of a quickstart pretraining step on CPU. Here each chunk of rows is projected, normalised in float32
while it is still in cache, and turned straight into its gradient (softmax minus one-hot), so the full logits never
exist and the backward pass is a multiply by the incoming scalar. The result and gradients are those of
`F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")` up to rounding of the compute dtype.

How many rows a chunk holds matters at both ends. Every chunk reads the whole weight twice and adds its part of the
weight's gradient into a float32 [vocab, dim] buffer: with a 262k vocabulary (Gemma 3) that is ~2 GB of memory traffic
per chunk, so a chunk of a few rows (a logits budget alone gives 8 rows at 8 MB, 64 at 64 MB) turns three matmuls into
memory copies (at 8 rows, ~130 of the ~150 CPU-s of a Gemma 3 270M step). A chunk therefore holds at least `MIN_ROWS`
rows (256: the weight's traffic is then small next to the chunk's matmuls), and more when the vocabulary is small
enough for `CHUNK_ELEMENTS`.

Given a `Workspace`, a call's largest buffers are kept for the next call instead of freed: the weight's float32
gradient (recycled from `.grad` by the caller after the optimizer step) and, from `KEEP_BYTES` up, the weight's cast
to the autocast dtype and the chunk's logits and log-probabilities. On the CPU under autocast, where glibc maps blocks
above 32 MB afresh (`heap.py`), a Gemma 3 step otherwise wrote ~1.4 GB of fresh pages here, at 1-8 us a page fault,
varying from step to step (the first chunk's weight-gradient product: 1.5 s into a fresh tensor, 0.27 s into a kept
one). Smaller buffers come back from the heap's free space without faults (SmolLM2's, 33-67 MB): kept, they only
added to the peak memory.
"""

from __future__ import annotations

import torch

#: float32 logits per chunk (64 MB) when the vocabulary is small: rows = this // vocab. Each chunk also writes a [vocab,
#: hidden] weight gradient, so small chunks pay that pass again and again: at 8 MB (42 rows of SmolLM2's 49k vocabulary)
#: the head + loss of 150 supervised rows took 0.55 s of CPU time, at 64 MB 0.29 s (bf16 and fp32 alike).
CHUNK_ELEMENTS = 1 << 24
MIN_ROWS = 256  # ...but never fewer rows than this (a large vocabulary: 256 x 262k float32 logits = 268 MB)
KEEP_BYTES = 128 << 20  # a `Workspace` keeps forward buffers from this size up


def chunk_rows(vocab: int) -> int:
    """Rows per chunk for a vocabulary of `vocab` classes."""
    return max(1, MIN_ROWS, CHUNK_ELEMENTS // vocab)


class Workspace:
    """The buffers `linear_cross_entropy` keeps from one call to the next (see the module's docstring). The weight's
    gradient comes back only through `recycle`: the loss hands it on to autograd, which becomes its only owner."""

    def __init__(self):
        self._kept: dict[str, torch.Tensor] = {}

    def tensor(self, name: str, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        kept = self._kept.get(name)
        if kept is None or kept.shape != shape or kept.dtype != dtype or kept.device != device:
            kept = torch.empty(shape, dtype=dtype, device=device)
            if kept.numel() * kept.element_size() >= KEEP_BYTES:
                self._kept[name] = kept
        return kept

    def gradient(self, shape, device: torch.device) -> torch.Tensor:
        """A float32 tensor for the weight's gradient: the recycled one if any, no longer held here."""
        kept = self._kept.pop("grad_weight", None)
        if kept is None or kept.shape != shape or kept.device != device:
            return torch.empty(shape, dtype=torch.float32, device=device)
        return kept

    def recycle(self, weight: torch.Tensor) -> None:
        """Set `weight.grad` to None, keeping its tensor for the next call's weight gradient (in place of zero_grad
        for this weight, after the optimizer step)."""
        grad = weight.grad
        if grad is not None and grad.dtype == torch.float32 and grad.is_contiguous() and grad.layout == torch.strided:
            self._kept["grad_weight"] = grad
        weight.grad = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._kept.values())


def _empty(workspace: Workspace | None, name: str, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return workspace.tensor(name, shape, dtype, device)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, want_grad, handoff, workspace):
        vocab, device = weight.shape[0], hidden.device
        if weight.dtype == compute_dtype:
            w = weight
        else:
            w = _empty(workspace, "weight", weight.shape, compute_dtype, device).copy_(weight)
        h_all = hidden.to(compute_dtype)
        n, rows = h_all.shape[0], chunk_rows(vocab)
        if workspace is None:
            rows = min(n, rows)  # kept buffers stay at full size: a changing shape would allocate them again
        # one set of buffers for all chunks: a fresh [rows, vocab] tensor per chunk costs page faults (zeroed pages from
        # the kernel) that, at a large vocabulary, take longer than the chunk's arithmetic
        logits = _empty(workspace, "logits", (rows, vocab), compute_dtype, device)  # also holds p in the compute dtype
        logp = _empty(workspace, "logp", (rows, vocab), torch.float32, device)
        total = torch.zeros((), dtype=torch.float32, device=device)
        grad_h = torch.empty_like(h_all) if want_grad else None
        grad_w = None
        if want_grad and weight.requires_grad:  # not for a frozen head (LoRA)
            grad_w = workspace.gradient(weight.shape, device) if workspace is not None \
                else torch.empty(weight.shape, dtype=torch.float32, device=device)
        for start in range(0, n, rows):
            h, t = h_all[start:start + rows], targets[start:start + rows, None]
            r = h.shape[0]
            z, x = logits[:r], logp[:r]
            torch.mm(h, w.T, out=z)
            if z.dtype == torch.float32:
                torch.log_softmax(z, 1, out=x)
            else:  # upcast into the float32 buffer, then in place: log_softmax(z, dtype=float32) would first copy z
                x.copy_(z)  # into a fresh float32 tensor (268 MB of new pages a chunk at Gemma 3's vocabulary)
                torch.log_softmax(x, 1, out=x)
            picked = x.gather(1, t)
            total -= picked.sum()
            if not want_grad:
                continue
            p = x.exp_()
            p.scatter_add_(1, t, torch.full_like(picked, -1.0))  # softmax - one-hot = d loss / d logits
            # the weight gradient in float32 from the float32 p: its [vocab, dim] output, written once per chunk,
            # is the cost (a bf16 product then cast took 56 ms where this takes 32, at 154 rows of SmolLM2's vocabulary)
            if grad_w is not None:
                h32 = h.float()
                if start == 0:  # the first chunk's part fills the buffer (one chunk: no add)
                    torch.mm(p.T, h32, out=grad_w)
                else:
                    grad_w.addmm_(p.T, h32)
            if p.dtype != compute_dtype:
                p = z.copy_(p)
            torch.mm(p, w, out=grad_h[start:start + r])
        if want_grad:
            ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes, ctx.used, ctx.handoff = (hidden.dtype, weight.dtype), False, handoff
        ctx.weight = weight if handoff is not None else None
        return total

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.used:
            raise RuntimeError("linear_cross_entropy: backward through the same loss twice is not supported (its saved "
                               "weight gradient is scaled in place)")
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        grad_weight = None
        if grad_w is not None:
            # in place: a second [vocab, dim] float32 tensor would cost as much as the scaling itself
            grad_weight = grad_w.mul_(grad_out).to(w_dtype)
            if ctx.handoff is not None:  # a tied input embedding adds its rows into it (tied_embedding.py)
                ctx.handoff.give(ctx.weight, grad_weight)
        del grad_w, ctx.weight
        grad_hidden = (grad_h * grad_out).to(h_dtype) if grad_h is not None else None
        return grad_hidden, grad_weight, None, None, None, None, None


@torch.compiler.disable  # already fused; traced, its row count (data-dependent) would recompile every batch
def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         handoff=None, workspace: Workspace | None = None) -> torch.Tensor:
    """Sum over rows of cross-entropy(hidden @ weight.T, targets), in float32, without materialising all logits.

    Under autocast the matmuls run in the autocast dtype, like `F.linear` would. Every target must be a valid class
    (select the supervised rows first). `handoff` (a `tied_embedding.GradientHandoff`): the backward gives it the
    weight's gradient for a tied input embedding to add into. `workspace`: keep the large buffers for the next call."""
    if hidden.shape[0] == 0:
        return (hidden.sum() + weight.sum()) * 0.0  # keeps the graph (and the collective under DDP) intact
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, dtype, want_grad,
                                         handoff if want_grad and weight.requires_grad else None, workspace)
