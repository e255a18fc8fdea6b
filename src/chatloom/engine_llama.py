"""A lean decoder for Llama-family models (llama, mistral, qwen2 without sliding windows): the same weights as the
transformers model, a preallocated KV cache, and about two dozen tensor ops per layer.

Why: at batch 1 on a CPU, a small model's decoding step is dominated by per-module Python and dispatch overhead
(transformers' attention interface, mask building, cache objects). Here q/k/v and gate/up are one matmul each (the
model's own Linear weights become views into the fused tensors, so no memory is duplicated), RMSNorm is one fused
`F.rms_norm`, rotary embedding is applied to q and k together (one multiply-add with a rolled copy, tables from the
model's own rotary module once per batch), and attention is one `scaled_dot_product_attention` over the cache.
The engine uses it when `LlamaDecoder.supports(model)`, and falls back to the transformers forward otherwise;
tests check both give the same greedy tokens.

Weights (`quantize=`, see `chatloom.quant`): None multiplies by the model's float weights in its dtype; "int8" makes
the fused matrices and the output head per-channel int8 through PyTorch's dynamic int8 kernels (float32 activations,
a quarter of fp32's weight bytes); "int4" makes the fused matrices group-wise int4 (Q4_1-style, groups of 32, an eighth of
fp32's bytes plus scales) through `aten._weight_int4pack_mm_for_cpu`, with bfloat16 activations and KV cache (its
vectorised kernel takes bfloat16), and the output head int8 weight-only (as llama.cpp's Q4_1 files keep the output
matrix at Q8_0: on SmolLM2-135M an int4 head cost 7 points of teacher-forced top-1 agreement with fp32, 90.8% vs 97.7%). The float weights stay in the model for the transformers path; a quantized decoder reads only
the embedding rows and the norms from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .quant import FloatLinear, Int4Linear, Int8Linear, Int8WeightOnly, int4_fits, int8_weight_only_fits

SUPPORTED = {"llama", "mistral", "qwen2"}
QUANTIZE = ("int8", "int4")


class _Layer:
    __slots__ = ("ln1", "ln2", "eps1", "eps2", "qkv", "o", "gu", "d", "inter")


class LlamaDecoder:
    def __init__(self, model, int8: bool = False, quantize: str | None = None):
        quantize = quantize or ("int8" if int8 else None)
        if quantize not in (None, *QUANTIZE):
            raise ValueError(f"unknown quantization {quantize!r}; supported: {', '.join(QUANTIZE)}")
        if quantize == "int8" and model.dtype != torch.float32:
            raise ValueError(f"int8 weights need a float32 model (dynamic int8 kernels take float32 activations), got {model.dtype}")
        self.model = model
        self.quantize = quantize
        self.int8 = quantize == "int8"
        self.dtype = torch.bfloat16 if quantize == "int4" else model.dtype  # activations and KV cache
        config = model.config
        self.config = config
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.hidden = self.embed.weight.shape[1]
        self.norm, self.norm_eps = self._norm(inner.norm)
        # the float head stays the model's module (hooks on it see the logits: tests script replies that way)
        self.lm_head = self._linear(model.lm_head.weight.data, None, head=True) if quantize else model.lm_head
        self.layers = [self._fuse(layer) for layer in inner.layers]

    @staticmethod
    def supports_config(config) -> bool:
        """Whether a model of this (transformers) config can decode here, before loading its weights."""
        if config is None or getattr(config, "model_type", None) not in SUPPORTED:
            return False
        if getattr(config, "use_sliding_window", False) or (config.model_type == "mistral" and config.sliding_window):
            return False
        return not getattr(config, "mlp_bias", False) and getattr(config, "hidden_act", "silu") == "silu"

    @staticmethod
    def supports(model) -> bool:
        inner = getattr(model, "model", None)
        if inner is None or not LlamaDecoder.supports_config(getattr(model, "config", None)):
            return False
        layer = inner.layers[0]
        linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj, model.lm_head]
        norms = [layer.input_layernorm, layer.post_attention_layernorm, inner.norm]
        return (all(type(m) is torch.nn.Linear for m in linears) and hasattr(inner, "rotary_emb")
                and all(hasattr(n, "variance_epsilon") and getattr(n, "weight", None) is not None for n in norms))

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one batch-1 step reads: every matrix, bias and norm once, plus one embedding row."""
        head = self.lm_head.nbytes if self.quantize else FloatLinear(self.lm_head.weight, self.lm_head.bias).nbytes
        total = head + self.norm.numel() * self.norm.element_size()
        for layer in self.layers:
            total += sum(m.nbytes for m in (layer.qkv, layer.o, layer.gu, layer.d))
            total += (layer.ln1.numel() + layer.ln2.numel()) * layer.ln1.element_size()
        return total + self.hidden * self.embed.weight.element_size()

    def _norm(self, module) -> tuple[torch.Tensor, float]:
        return module.weight.data.to(self.dtype), float(module.variance_epsilon)

    def _linear(self, weight: torch.Tensor, bias: torch.Tensor | None, head: bool = False):
        if self.quantize == "int8":
            return Int8Linear(weight, bias)
        if self.quantize == "int4":
            if int4_fits(weight) and not head:  # the output head stays int8, as llama.cpp's Q4_1 files keep it (Q8_0)
                return Int4Linear(weight, bias)
            if int8_weight_only_fits(weight):
                return Int8WeightOnly(weight, bias)
            return FloatLinear(weight.to(self.dtype), bias.to(self.dtype) if bias is not None else None)
        return FloatLinear(weight, bias)

    @staticmethod
    def _fuse_linears(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One weight for several Linears; the Linears keep working on views of it (no extra memory)."""
        weight = torch.cat([m.weight.data for m in linears], dim=0)
        has_bias = all(m.bias is not None for m in linears)
        bias = torch.cat([m.bias.data for m in linears], dim=0) if has_bias else None
        start = 0
        for m in linears:
            rows = m.weight.shape[0]
            m.weight.data = weight[start:start + rows]
            if has_bias:
                m.bias.data = bias[start:start + rows]
            start += rows
        return weight, bias

    def _fuse(self, layer) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        if attn.q_proj.bias is not None and not (attn.k_proj.bias is not None and attn.v_proj.bias is not None):
            raise ValueError("q/k/v biases must all be present or all absent")
        wqkv, bqkv = self._fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        wgu, _ = self._fuse_linears([mlp.gate_proj, mlp.up_proj])
        bo = attn.o_proj.bias.data if attn.o_proj.bias is not None else None
        out = _Layer()
        out.ln1, out.eps1 = self._norm(layer.input_layernorm)
        out.ln2, out.eps2 = self._norm(layer.post_attention_layernorm)
        out.qkv, out.o = self._linear(wqkv, bqkv), self._linear(attn.o_proj.weight.data, bo)
        out.gu, out.d = self._linear(wgu, None), self._linear(mlp.down_proj.weight.data, None)
        out.inter = mlp.gate_proj.weight.shape[0]
        return out

    # ----------------------------------------------------------------------------------------------------- state
    def new_cache(self, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        device = self.embed.weight.device
        shape = (batch, self.n_kv, length, self.head_dim)
        return [(torch.empty(shape, dtype=self.dtype, device=device), torch.empty(shape, dtype=self.dtype, device=device))
                for _ in self.layers]

    def rope_tables(self, length: int):
        """(cos, sin) for positions 0..length-1 from the model's own rotary module (so every rope scaling works), in the
        activation dtype; sin's first half is negated, so rotating is `x * cos + x.roll(half, -1) * sin`."""
        positions = torch.arange(length, device=self.embed.weight.device)[None]
        dummy = torch.empty(1, dtype=self.embed.weight.dtype, device=self.embed.weight.device)
        cos, sin = self.rotary(dummy, positions)
        cos, sin = cos[0].to(self.dtype), sin[0].to(self.dtype).clone()
        sin[:, :self.head_dim // 2] *= -1
        return cos, sin

    # ----------------------------------------------------------------------------------------------------- forward
    def forward(self, input_ids, positions, cache, start: int, mask, tables) -> torch.Tensor:
        """input_ids, positions: (B, T); writes the cache at columns start..start+T; mask: None (no padding) or a bool
        (B, 1, T, start+T) mask of allowed keys. Returns the logits of the last position, (B, vocab)."""
        b, t = input_ids.shape
        end = start + t
        cos, sin = tables[0][positions].unsqueeze(2), tables[1][positions].unsqueeze(2)  # (B, T, 1, D)
        h = self.embed(input_ids)  # the module (not F.embedding): hooks on it see every token fed
        if h.dtype != self.dtype:
            h = h.to(self.dtype)
        nh, d = self.n_heads, self.head_dim
        nq, nqk, half, width = nh * d, (nh + self.n_kv) * d, d // 2, (self.hidden,)
        causal = mask is None and t > 1
        gqa = self.n_kv != nh
        for layer, (k_cache, v_cache) in zip(self.layers, cache, strict=True):
            qkv = layer.qkv(F.rms_norm(h, width, layer.ln1, layer.eps1))
            qk = qkv[..., :nqk].view(b, t, -1, d)
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin)  # rotary on q and k at once
            k_cache[:, :, start:end] = qk[:, :, nh:].transpose(1, 2)
            v_cache[:, :, start:end] = qkv[..., nqk:].view(b, t, -1, d).transpose(1, 2)
            a = F.scaled_dot_product_attention(qk[:, :, :nh].transpose(1, 2), k_cache[:, :, :end], v_cache[:, :, :end],
                                               attn_mask=mask, is_causal=causal, enable_gqa=gqa)
            h = h + layer.o(a.transpose(1, 2).reshape(b, t, nq))
            gu = layer.gu(F.rms_norm(h, width, layer.ln2, layer.eps2))
            h = h + layer.d(F.silu(gu[..., :layer.inter]) * gu[..., layer.inter:])
        return self.lm_head(F.rms_norm(h[:, -1], width, self.norm, self.norm_eps))
