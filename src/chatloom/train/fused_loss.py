"""The output projection and cross-entropy as one operation, in row chunks.

On a small model the vocabulary projection is the largest matmul, and the usual path (logits for every row, upcast to
float32, log-softmax, its backward, downcast) spends more time moving the [rows, vocab] tensors through memory than
multiplying: 37% of a quickstart pretraining step on CPU. Here each chunk of rows is projected, normalised in float32
while it is still in cache, and turned straight into its gradient (softmax minus one-hot), so the full logits never
exist and the backward pass is a multiply by the incoming scalar. When there are few rows (SFT supervises a fraction of
the tokens) the [rows, vocab] softmax gradient is smaller than a float32 [vocab, hidden] weight gradient: it is kept
instead, and the backward pass forms the weight gradient in one matmul (135M SmolLM2, 150 supervised rows: 15 MB kept
instead of 113 MB, and one pass over the weight gradient fewer). The result and gradients are those of
`F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")` up to rounding of the compute dtype.
"""

from __future__ import annotations

import torch

#: float32 logits per chunk (64 MB): rows = this // vocab. Each chunk also writes a [vocab, hidden] weight gradient,
#: so small chunks pay that pass again and again: at 8 MB (42 rows of SmolLM2's 49k vocabulary) the head + loss of
#: 150 supervised rows took 0.55 s of CPU time, at 64 MB 0.29 s (bf16 and fp32 alike).
CHUNK_ELEMENTS = 1 << 24


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, want_grad):
        w = weight.to(compute_dtype)
        h_all = hidden.to(compute_dtype)
        n, vocab = h_all.shape[0], weight.shape[0]
        rows = max(1, CHUNK_ELEMENTS // vocab)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(h_all) if want_grad else None
        # few rows (SFT supervises a fraction of the tokens): keep the [rows, vocab] softmax gradient, smaller than a
        # float32 [vocab, hidden] weight gradient, and form the weight gradient in the backward pass in one matmul
        keep_p = want_grad and n * h_all.element_size() <= weight.shape[1] * 4
        p_all = torch.empty(n, vocab, dtype=compute_dtype, device=hidden.device) if keep_p else None
        grad_w = None  # float32; the first chunk's product becomes it (no zero-filled matrix to add into)
        for start in range(0, n, rows):
            h, t = h_all[start:start + rows], targets[start:start + rows]
            logp = torch.log_softmax(h @ w.T, -1, dtype=torch.float32)
            picked = logp.gather(1, t[:, None])
            total -= picked.sum()
            if want_grad:
                p = logp.exp_()
                p.scatter_add_(1, t[:, None], torch.full_like(picked, -1.0))
                if keep_p:
                    p = p_all[start:start + rows].copy_(p)
                else:
                    p = p.to(compute_dtype)
                grad_h[start:start + rows] = p @ w
                if keep_p:
                    continue
                if grad_w is None:
                    grad_w = (p.T @ h).float()
                elif p.dtype == torch.float32:
                    grad_w.addmm_(p.T, h)
                else:
                    grad_w.add_(p.T @ h)  # accumulates in float32
        if want_grad:
            ctx.save_for_backward(grad_h, grad_w if not keep_p else p_all, hidden if keep_p else None)
        ctx.keep_p, ctx.compute_dtype = keep_p, compute_dtype
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, saved, hidden = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        if ctx.keep_p:  # d(loss)/dW = grad_out * P^T H: the scale goes on the [rows, hidden] side, the small one
            scaled = (hidden.float() * grad_out).to(ctx.compute_dtype)
            grad_w = saved.T @ scaled
        else:
            grad_w = saved * grad_out
        return (grad_h * grad_out).to(h_dtype), grad_w.to(w_dtype), None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows of cross-entropy(hidden @ weight.T, targets), in float32, without materialising all logits.

    Under autocast the matmuls run in the autocast dtype, like `F.linear` would. Every target must be a valid class
    (select the supervised rows first)."""
    if hidden.shape[0] == 0:
        return (hidden.sum() + weight.sum()) * 0.0  # keeps the graph (and the collective under DDP) intact
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, dtype, want_grad)
