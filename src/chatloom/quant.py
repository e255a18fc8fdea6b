"""Weight-only quantized matrices for CPU decoding: each is a callable `linear(x) == x @ W.T + b` up to the error of its
scheme, built once from a float weight.

Why: at batch 1 a decoding step reads every weight once, so it runs about as fast as the memory (and the cache
hierarchy) delivers weight bytes. Fewer bytes per weight is the speed-up; the kernels must not turn the saving back
into work (no dequantizing whole matrices per token at Python level).

- `int8` (`Int8Linear`): per-output-channel int8 weights through PyTorch's dynamic int8 kernels (fbgemm): activations
  are quantized on the fly, float32 in and out. One byte a weight.
- `int4` (`Int4Linear`): group-wise asymmetric int4 as llama.cpp's Q4_1 does it (groups of `group_size` consecutive
  input columns, w = q * scale + min with q in 0..15, scale = (max - min) / 15; stored as the kernel's
  (q - 8) * scale + zero), packed two per byte, multiplied by
  `aten._weight_int4pack_mm_for_cpu` (unpacks in registers, accumulates in float32). Its vectorised kernel takes
  bfloat16 activations (the float32 one is scalar and ~50x slower), so int4 decodes with bfloat16 activations. Scale and
  zero are stored in bfloat16 and q is computed against the stored (rounded) values. 0.5 + 4 / group_size bytes a
  weight (0.625 at 32, like Q4_1). The kernel wants out_features % 16 == 0 and in_features % group_size == 0;
  `int4_fits` says whether a matrix does.
- `Int8WeightOnly`: per-channel int8 weights times bfloat16 activations (`torch._weight_int8pack_mm`, which needs
  in_features % 16 == 0); the int4 decoder's fallback for matrices the int4 kernel cannot take (and bfloat16 weights
  for those neither can).
"""

from __future__ import annotations

import warnings

import torch

INT4_GROUP = 32


def int4_fits(weight: torch.Tensor, group_size: int = INT4_GROUP) -> bool:
    out_features, in_features = weight.shape
    return out_features % 16 == 0 and in_features % group_size == 0


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scale, zero): q int32 (out, in) in 0..15; scale and zero bfloat16 (out, in // group_size), such that
    `weight ≈ (q - 8) * scale + zero` group by group, the form the int4 kernel computes. scale = (max - min) / 15 and
    zero = min + 8 * scale (so q = 0 is the group minimum, as in Q4_1), both rounded to bfloat16 first and q chosen
    against the rounded values."""
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"int4: in_features {in_features} is not a multiple of the group size {group_size}")
    w = weight.detach().float().reshape(out_features, in_features // group_size, group_size)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-30).to(torch.bfloat16)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    q = ((w - zero.float()[..., None]) / scale.float()[..., None] + 8).round().clamp(0, 15).to(torch.int32)
    return q.reshape(out_features, in_features), scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The float32 matrix the int4 kernel multiplies by: (q - 8) * scale + zero (for tests and error measurements)."""
    out_features, in_features = q.shape
    groups = scale.shape[1]
    w = (q.reshape(out_features, groups, in_features // groups).float() - 8) * scale.float()[..., None] \
        + zero.float()[..., None]
    return w.reshape(out_features, in_features)


class Int4Linear:
    """x @ W.T + b with W group-wise int4 (see the module docstring); x bfloat16 (..., in), returns bfloat16 (..., out)."""

    scheme = "int4"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = INT4_GROUP):
        if not int4_fits(weight, group_size):
            raise ValueError(f"int4: a {tuple(weight.shape)} matrix needs out_features % 16 == 0 and in_features % "
                             f"{group_size} == 0")
        self.out_features, self.in_features = weight.shape
        self.group_size = group_size
        q, scale, zero = quantize_int4(weight, group_size)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        # the kernel reads (in // group, out, 2) pairs of (scale, zero)
        self.scales_and_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
        self.bias = bias.detach().to(torch.bfloat16) if bias is not None else None
        self._mm = torch.ops.aten._weight_int4pack_mm_for_cpu.default

    @property
    def nbytes(self) -> int:
        """Bytes one multiplication reads: packed weights, scales and offsets, bias."""
        bias = self.bias.numel() * 2 if self.bias is not None else 0
        return self.packed.numel() * self.packed.element_size() + self.scales_and_zeros.numel() * 2 + bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mm(x.reshape(-1, self.in_features), self.packed, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


def int8_weight_only_fits(weight: torch.Tensor) -> bool:
    return weight.shape[1] % 16 == 0  # measured: other widths give wrong results in torch 2.13's kernel


class Int8WeightOnly:
    """x @ W.T + b with W int8 per output channel and x bfloat16 (`torch._weight_int8pack_mm`); returns bfloat16.
    Needs in_features % 16 == 0 (`int8_weight_only_fits`)."""

    scheme = "int8-weight-only"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if not int8_weight_only_fits(weight):
            raise ValueError(f"int8 weight-only: in_features {weight.shape[1]} is not a multiple of 16")
        w = weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        self.weight = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(torch.bfloat16)
        self.bias = bias.detach().to(torch.bfloat16) if bias is not None else None
        self.out_features, self.in_features = weight.shape

    @property
    def nbytes(self) -> int:
        bias = self.bias.numel() * 2 if self.bias is not None else 0
        return self.weight.numel() + self.scale.numel() * 2 + bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


class Int8Linear:
    """A dynamic int8 Linear (per-output-channel weight scales, activations quantized on the fly): float32 in and out."""

    scheme = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the kernels are what we use
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            linear.weight.data = weight.detach().float().clone()
            if bias is not None:
                linear.bias.data = bias.detach().float().clone()
            self.module = quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                           dtype=torch.qint8)[0]
        self.out_features, self.in_features = weight.shape

    def weight(self) -> torch.Tensor:
        return self.module.weight()

    @property
    def nbytes(self) -> int:
        bias = self.module.bias()
        return self.out_features * self.in_features + self.out_features * 4 + (bias.numel() * 4 if bias is not None else 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class FloatLinear:
    """x @ W.T + b with the float weight as it is (shared with the model, no copy)."""

    scheme = "float"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias = weight, bias
        self.out_features, self.in_features = weight.shape

    @property
    def nbytes(self) -> int:
        bias = self.bias.numel() * self.bias.element_size() if self.bias is not None else 0
        return self.weight.numel() * self.weight.element_size() + bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)
