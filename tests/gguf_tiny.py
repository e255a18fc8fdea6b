"""A tiny Llama as a GGUF file, written the way llama.cpp's converter writes one, for tests of GGUF loading.

F32 tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, ...), q/k rows permuted as llama.cpp permutes them
(transformers undoes that on load), the `llama.*` hyper-parameters, and chatloom's bundled byte-level BPE as a `gpt2`
tokenizer in the metadata (tokens, merges, token types, bos/eos ids). Returns the reference `LlamaForCausalLM` holding
the same weights, so a test can compare what transformers loads from the file with what was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from chatloom.train.models import BUNDLED_TOKENIZER, build_model

NORMAL, CONTROL = 1, 3  # llama.cpp token types


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: rotary halves of each head interleaved (rows of q_proj / k_proj)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_metadata(tokenizer_json: str | Path | None = None) -> tuple[list[str], list[str], list[int]]:
    spec = json.loads(Path(tokenizer_json or BUNDLED_TOKENIZER / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    by_id.update({a["id"]: a["content"] for a in spec["added_tokens"]})  # a model dir's control tokens
    tokens = [by_id[i] for i in range(len(by_id))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    special = {a["content"] for a in spec["added_tokens"] if a["special"]}
    return tokens, merges, [CONTROL if t in special else NORMAL for t in tokens]


def write_tiny_llama_gguf(path: str | Path, seed: int = 0, *, tokenizer_json: str | Path | None = None,
                          chat_template: str | None = None, eos_token_id: int = 0):
    """Write a `tiny`-shaped Llama with random weights (norms too) to `path`; return the equal reference model.

    `tokenizer_json` (default chatloom's bundled BPE; e.g. a model directory's, with its control tokens),
    `chat_template` and `eos_token_id` go into the tokenizer metadata as llama.cpp's converter writes them."""
    import gguf

    tokens, merges, types = _tokenizer_metadata(tokenizer_json)
    model = build_model("tiny", len(tokens), seed=seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms away from 1.0, so a norm that loads wrong (or not at all) changes the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen))
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("chatloom-tiny-test")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(0)
    w.add_eos_token_id(eos_token_id)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def tensor(name: str, t: torch.Tensor) -> None:
        w.add_tensor(name, t.detach().float().numpy().copy())

    tensor("token_embd.weight", model.model.embed_tokens.weight)
    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        tensor(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight)
        w.add_tensor(f"blk.{i}.attn_q.weight", llama_cpp_permute(a.q_proj.weight.detach().numpy(), c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", llama_cpp_permute(a.k_proj.weight.detach().numpy(), c.num_key_value_heads))
        tensor(f"blk.{i}.attn_v.weight", a.v_proj.weight)
        tensor(f"blk.{i}.attn_output.weight", a.o_proj.weight)
        tensor(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight)
        tensor(f"blk.{i}.ffn_gate.weight", m.gate_proj.weight)
        tensor(f"blk.{i}.ffn_up.weight", m.up_proj.weight)
        tensor(f"blk.{i}.ffn_down.weight", m.down_proj.weight)
    tensor("output_norm.weight", model.model.norm.weight)
    tensor("output.weight", model.lm_head.weight)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model
