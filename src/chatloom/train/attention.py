"""Attention for training: transformers' SDPA, run in float32 when the model computes in bfloat16 on CPU.

PyTorch's CPU flash-attention kernel is slower in bfloat16 than in float32 for the small heads chatloom trains here
(fwd+bwd of one `small` layer at [16, 8, 256, 32]: 58 ms in bf16, 35 ms in fp32 including the casts), and float32 is the
more exact of the two. The model's matmuls stay in bfloat16 under autocast; only the attention core is upcast.
Registered with transformers' `AttentionInterface` as "chatloom_sdpa" for the duration of a training run; exported
models keep "sdpa".
"""

from __future__ import annotations

import torch

NAME = "chatloom_sdpa"


def cpu_fp32_sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    low = torch.bfloat16 in (query.dtype, key.dtype, value.dtype) or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    if query.device.type != "cpu" or not low:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    mask = attention_mask.float() if attention_mask is not None and attention_mask.is_floating_point() else attention_mask
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, **kwargs)
    return out.to(torch.bfloat16), weights


def use_training_attention(model) -> bool:
    """Switch a transformers model that uses SDPA to "chatloom_sdpa" (same results, faster bf16 on CPU). Returns whether
    it switched; `restore_attention` switches back before the model is saved."""
    from transformers import AttentionInterface

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, cpu_fp32_sdpa)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError):
        return False
    return getattr(config, "_attn_implementation", None) == NAME


def restore_attention(model) -> None:
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME:
        model.set_attn_implementation("sdpa")
