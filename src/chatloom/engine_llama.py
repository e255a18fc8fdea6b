"""A lean decoder for Llama-family models (llama, mistral, qwen2 without sliding windows): the same weights as the
transformers model, a preallocated KV cache, and about a dozen tensor ops per layer.

Why: at batch 1 on a CPU, a small model's decoding step is dominated by per-module Python and dispatch overhead
(transformers' attention interface, mask building, cache objects). Here q/k/v and gate/up are one matmul each (the
model's own Linear weights become views into the fused tensors, so no memory is duplicated), rotary tables come from the
model's own rotary module once per batch, and attention is one `scaled_dot_product_attention` over the cache.
The engine uses it when `LlamaDecoder.supports(model)`, and falls back to the transformers forward otherwise;
tests check both give the same greedy tokens.

With `int8=True` the fused matrices and the output head are quantized to int8 per output channel and multiplied by
PyTorch's dynamic int8 kernels (activations quantized on the fly): a quarter of fp32's weight bytes per token, through the
same lean loop. (The float weights stay in the model for the transformers path; the decoder never reads them.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED = {"llama", "mistral", "qwen2"}


class LlamaDecoder:
    def __init__(self, model, int8: bool = False):
        if int8 and model.dtype != torch.float32:
            raise ValueError(f"int8 weights need a float32 model (dynamic int8 kernels take float32 activations), got {model.dtype}")
        self.model = model
        self.int8 = int8
        config = model.config
        self.config = config
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        inner = model.model
        self.embed = inner.embed_tokens
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = _int8_linear(model.lm_head.weight.data, None) if int8 else model.lm_head
        self.layers = [self._fuse(layer) for layer in inner.layers]

    @staticmethod
    def supports(model) -> bool:
        config = getattr(model, "config", None)
        inner = getattr(model, "model", None)
        if config is None or inner is None or getattr(config, "model_type", None) not in SUPPORTED:
            return False
        if getattr(config, "use_sliding_window", False) or (config.model_type == "mistral" and config.sliding_window):
            return False
        if getattr(config, "mlp_bias", False) or getattr(config, "hidden_act", "silu") != "silu":
            return False
        layer = inner.layers[0]
        linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj, model.lm_head]
        return all(type(m) is torch.nn.Linear for m in linears) and hasattr(inner, "rotary_emb")

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

    def _fuse(self, layer) -> dict:
        attn, mlp = layer.self_attn, layer.mlp
        if attn.q_proj.bias is not None and not (attn.k_proj.bias is not None and attn.v_proj.bias is not None):
            raise ValueError("q/k/v biases must all be present or all absent")
        wqkv, bqkv = self._fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        wgu, _ = self._fuse_linears([mlp.gate_proj, mlp.up_proj])
        make = _int8_linear if self.int8 else _float_linear
        bo = attn.o_proj.bias.data if attn.o_proj.bias is not None else None
        return {"ln1": layer.input_layernorm, "ln2": layer.post_attention_layernorm, "qkv": make(wqkv, bqkv),
                "o": make(attn.o_proj.weight.data, bo), "gu": make(wgu, None), "d": make(mlp.down_proj.weight.data, None),
                "inter": mlp.gate_proj.weight.shape[0]}

    # ----------------------------------------------------------------------------------------------------- state
    def new_cache(self, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dtype, device = self.embed.weight.dtype, self.embed.weight.device
        shape = (batch, self.n_kv, length, self.head_dim)
        return [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                for _ in self.layers]

    def rope_tables(self, length: int):
        """cos/sin for positions 0..length-1 from the model's own rotary module (so every rope scaling works)."""
        positions = torch.arange(length, device=self.embed.weight.device)[None]
        dummy = torch.empty(1, dtype=self.embed.weight.dtype, device=self.embed.weight.device)
        cos, sin = self.rotary(dummy, positions)
        return cos[0], sin[0]

    # ----------------------------------------------------------------------------------------------------- forward
    def forward(self, input_ids, positions, cache, start: int, mask, tables) -> torch.Tensor:
        """input_ids, positions: (B, T); writes the cache at columns start..start+T; mask: None (no padding) or a bool
        (B, 1, T, start+T) mask of allowed keys. Returns the logits of the last position, (B, vocab)."""
        b, t = input_ids.shape
        end = start + t
        cos, sin = tables[0][positions].unsqueeze(1), tables[1][positions].unsqueeze(1)  # (B, 1, T, D)
        h = self.embed(input_ids)
        nq, nkv, d = self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.head_dim
        causal = mask is None and t > 1
        for layer, (k_cache, v_cache) in zip(self.layers, cache, strict=True):
            x = layer["ln1"](h)
            qkv = layer["qkv"](x)
            q = qkv[..., :nq].view(b, t, self.n_heads, d).transpose(1, 2)
            k = qkv[..., nq:nq + nkv].view(b, t, self.n_kv, d).transpose(1, 2)
            v = qkv[..., nq + nkv:].view(b, t, self.n_kv, d).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            a = F.scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=mask,
                                               is_causal=causal, enable_gqa=self.n_kv != self.n_heads)
            h = h + layer["o"](a.transpose(1, 2).reshape(b, t, nq))
            x = layer["ln2"](h)
            gu = layer["gu"](x)
            h = h + layer["d"](F.silu(gu[..., :layer["inter"]]) * gu[..., layer["inter"]:])
        return self.lm_head(self.norm(h[:, -1]))


def _float_linear(weight: torch.Tensor, bias: torch.Tensor | None):
    return lambda x: F.linear(x, weight, bias)


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None):
    """A dynamic int8 Linear (per-output-channel weight scales) computing `x @ weight.T + bias`."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the kernels are what we use
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        linear.weight.data = weight.detach().clone()
        if bias is not None:
            linear.bias.data = bias.detach().clone()
        return quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)[0]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
