"""`chatloom export MODEL_DIR --gguf OUT.gguf`: a Llama-family model directory as one GGUF file for llama.cpp / Ollama.

Users who serve with llama.cpp, `llama-server` or Ollama need a GGUF file that runs the fine-tuned model with the same
tokens it was trained on: the same vocabulary split the same way, the same chat template, and generation that stops at
the end-of-turn token. This module writes that file from a Hugging Face directory (the ones `chatloom train` exports,
or SmolLM2 / Llama / Mistral / Qwen2 checkpoints), with the `gguf` package's writer and quantizer:

- weights in llama.cpp's layout: tensor names from `gguf.get_tensor_name_map`, and the rows of q_proj / k_proj
  permuted for the `llama` architecture (HF checkpoints store the two rotary halves of each head apart; llama.cpp's
  rotary embedding pairs neighbouring rows, so each head's halves are interleaved). Qwen2 is a `qwen2` GGUF, whose
  rotary embedding is the HF one: no permutation. A tied output matrix is left out (llama.cpp reuses `token_embd`).
  `f16`: matrices in float16, norms and biases in float32; `q8_0`: matrices in llama.cpp's Q8_0 blocks.
  Tensors are streamed one at a time from the safetensors files (memory: one tensor, not the model).
- the tokenizer: byte-level BPE (tokens as stored in tokenizer.json, merges, token types: control tokens CONTROL,
  other added tokens USER_DEFINED, padding rows UNUSED) and `tokenizer.ggml.pre`, the name llama.cpp uses to choose its
  pre-tokenizer regex. It is chosen from the tokenizer.json pre-tokenizer (`PRE_TOKENIZERS`); a pre-tokenizer llama.cpp
  has no equal for is an error, not a silent guess (llama.cpp would split text differently from training).
  SentencePiece-style vocabularies (Llama 2, Mistral 7B v0.1) are not handled here: the error says so.
- the chat template (`chat_template.jinja`, the same text `chatloom check` compares) and the ids: eos = the protocol's
  end-of-turn token (so llama.cpp stops after a reply, also written as the eot id), bos = the tokenizer's, and
  `add_bos_token` false: chatloom's templates render every control token themselves.

`chatloom check MODEL_DIR --gguf OUT.gguf` compares the file's template and tokenizer with training, token by token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import model_meta

TYPES = ("f16", "q8_0")

#: HF architecture -> (GGUF architecture, q/k rows permuted for llama.cpp's rotary embedding)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True),  # Llama 1-3, SmolLM/SmolLM2, chatloom's own models
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}

# Pre-tokenizer regexes as tokenizer.json stores them (Split patterns) -> llama.cpp's name for the same split.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

#: a tokenizer.json pre-tokenizer, reduced to a signature (see `pre_signature`) -> llama.cpp's `tokenizer.ggml.pre`.
#: Each row is tested against llama.cpp's tokenizer in tests/test_gguf_export.py.
PRE_TOKENIZERS = {
    ("bytelevel-regex",): "gpt-2",  # GPT-2's regex inside ByteLevel: chatloom's bundled BPE, SmolLM2 via GGUF
    ("digits", "bytelevel-regex"): "smollm",  # each digit apart, then GPT-2's regex: SmolLM/SmolLM2 on the Hub
    ("split:" + LLAMA3_REGEX, "bytelevel"): "llama-bpe",  # Llama 3
    ("split:" + QWEN2_REGEX, "bytelevel"): "qwen2",  # Qwen2 / Qwen2.5
}

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp token types (gguf.TokenType)
MAX_F16 = 65504.0


class ExportError(ValueError):
    """The directory cannot be exported to GGUF (missing, unsupported architecture or tokenizer, bad files)."""


@dataclass
class Plan:
    """What will be written: hyper-parameters, tokenizer metadata and, per GGUF tensor, its source and type."""

    arch: str
    permute: bool
    hparams: dict
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int
    pad_id: int | None
    chat_template: str | None
    tensors: list[tuple[str, str, Path, tuple[int, ...], int]] = field(default_factory=list)  # gguf, hf, file, shape, type


# ------------------------------------------------------------------------------------------------ reading the directory
def _read_json(path: Path) -> dict:
    return model_meta.read_json_object(path, ExportError)


def _config(model_dir: Path) -> tuple[dict, str, bool]:
    if not model_dir.is_dir():
        raise ExportError(f"{model_dir}: no such model directory")
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    config = _read_json(path)
    archs = config.get("architectures") or []
    hf_arch = archs[0] if archs else None
    if hf_arch not in ARCHITECTURES:
        raise ExportError(f"{path}: architectures {archs or '(none)'} (model_type {config.get('model_type')!r}): GGUF "
                          f"export supports the Llama family only ({', '.join(ARCHITECTURES)})")
    if config.get("hidden_act", "silu") != "silu":
        raise ExportError(f"{path}: hidden_act {config['hidden_act']!r}: llama.cpp's {hf_arch} runs silu only")
    arch, permute = ARCHITECTURES[hf_arch]
    return config, arch, permute


def _rope(config: dict, path: Path) -> tuple[float, dict | None]:
    """(theta, scaling) from transformers 5's `rope_parameters` or 4's `rope_theta` + `rope_scaling`."""
    params = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or {}
    params = {**scaling, **params}
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "default":
        return theta, None
    if kind in ("linear", "llama3"):
        return theta, {"type": kind, **params}
    raise ExportError(f"{path}: rope type {kind!r} is not supported by this exporter (default, linear, llama3)")


def pre_signature(pre_tokenizer: dict | None) -> tuple[str, ...]:
    """A tokenizer.json pre-tokenizer as the parts that decide how text is split (see `PRE_TOKENIZERS`)."""
    if pre_tokenizer is None:
        return ()
    parts = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    out = []
    for p in parts:
        kind = p.get("type")
        if kind == "ByteLevel":
            if p.get("add_prefix_space"):
                out.append("bytelevel-prefix-space")
            else:
                out.append("bytelevel-regex" if p.get("use_regex", True) else "bytelevel")
        elif kind == "Digits":
            out.append("digits" if p.get("individual_digits") else "digit-runs")
        elif kind == "Split":
            pattern = p.get("pattern") or {}
            regex = pattern.get("Regex", pattern.get("String"))
            behaviour = p.get("behavior", "Isolated")
            out.append(f"split:{regex}" if behaviour == "Isolated" and not p.get("invert") else f"split-{behaviour}:{regex}")
        else:
            out.append(str(kind))
    return tuple(out)


def _tokenizer(model_dir: Path, n_vocab: int, pre: str | None):
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json (GGUF export needs a fast byte-level BPE tokenizer)")
    spec = _read_json(path)
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ExportError(f"{path}: model {model.get('type')!r} (byte_fallback={model.get('byte_fallback', False)}), "
                          f"decoder {decoder.get('type')!r}: only byte-level BPE vocabularies are exported (GPT-2 style: "
                          "chatloom's, SmolLM2, Llama 3, Qwen2); for SentencePiece-style ones (Llama 2, Mistral 7B "
                          "v0.1) use llama.cpp's convert_hf_to_gguf.py")
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise ExportError(f"{path}: normalizer {normalizer.get('type')!r}: llama.cpp does not apply it")
    signature = pre_signature(spec.get("pre_tokenizer"))
    if pre is None:
        pre = PRE_TOKENIZERS.get(signature)
        if pre is None:
            raise ExportError(f"{path}: pre-tokenizer {' + '.join(signature) or '(none)'} has no known llama.cpp "
                              "equal (tokenizer.ggml.pre); llama.cpp would split text unlike training. Known: "
                              + "; ".join(f"{' + '.join(s)} -> {n}" for s, n in PRE_TOKENIZERS.items()))
    by_id: dict[int, str] = {i: t for t, i in model.get("vocab", {}).items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    for i, a in added.items():
        by_id[i] = a["content"]
    size = max(by_id) + 1 if by_id else 0
    if size > n_vocab:
        raise ExportError(f"{path}: {size} tokens but the model has {n_vocab} embedding rows (config.json vocab_size)")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # rows past the tokenizer (padded vocabularies) or holes: never produced
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, pre


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set((_read_json(index).get("weight_map") or {}).values()))
        files = [model_dir / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ExportError(f"{index}: shard(s) {missing} missing")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ExportError(f"{model_dir}: no model.safetensors (or index): only safetensors weights are exported")


def _tensor_type(gguf_name: str, shape: tuple[int, ...], qtype: str) -> int:
    import gguf

    if len(shape) == 1 or gguf_name.endswith(".bias"):
        return gguf.GGMLQuantizationType.F32
    if qtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def plan(model_dir: str | Path, qtype: str = "f16", *, pre: str | None = None) -> Plan:
    """Read and check everything the file needs (no weights loaded). `pre` overrides the detected pre-tokenizer."""
    import gguf
    from safetensors import safe_open

    if qtype not in TYPES:
        raise ExportError(f"unknown GGUF type {qtype!r}; choose one of {', '.join(TYPES)}")
    model_dir = Path(model_dir)
    config, arch, permute = _config(model_dir)
    cpath = model_dir / "config.json"
    try:
        n_vocab, hidden = int(config["vocab_size"]), int(config["hidden_size"])
        n_layer, n_head = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        n_ff = int(config["intermediate_size"])
    except KeyError as e:
        raise ExportError(f"{cpath}: field {e.args[0]!r} missing") from e
    n_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or hidden // n_head)
    theta, scaling = _rope(config, cpath)
    hparams = dict(context_length=int(config.get("max_position_embeddings", 2048)), embedding_length=hidden,
                   block_count=n_layer, feed_forward_length=n_ff, head_count=n_head, head_count_kv=n_kv,
                   head_dim=head_dim, rope_freq_base=theta, rope_scaling=scaling,
                   rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), vocab_size=n_vocab,
                   name=config.get("_name_or_path") or model_dir.name)
    tokens, types, merges, pre = _tokenizer(model_dir, n_vocab, pre)

    bos_id, eos_id, pad_id, template = _special_ids(model_dir, tokens)
    p = Plan(arch, permute, hparams, tokens, types, merges, pre, bos_id, eos_id, pad_id, template)

    gguf_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(gguf_arch, n_layer)
    allowed = set(gguf.MODEL_TENSORS[gguf_arch])
    tied = bool(config.get("tie_word_embeddings", False))
    seen: set[str] = set()
    for file in _weight_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                if hf_name == "lm_head.weight" and tied:
                    continue
                found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
                if found is None or found[0] not in allowed:
                    raise ExportError(f"{file}: tensor {hf_name!r} has no place in llama.cpp's {arch} architecture")
                gguf_name = found[1]
                shape = tuple(f.get_slice(hf_name).get_shape())
                p.tensors.append((gguf_name, hf_name, file, shape, _tensor_type(gguf_name, shape, qtype)))
                seen.add(gguf_name)
    need = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{t}.weight" for i in range(n_layer)
        for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    missing = [n for n in need if n not in seen]
    if missing:
        raise ExportError(f"{model_dir}: weights missing for {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if scaling and scaling["type"] == "llama3":
        p.tensors.append(("rope_freqs.weight", "", Path(), (head_dim // 2,), gguf.GGMLQuantizationType.F32))
    return p


def _special_ids(model_dir: Path, tokens: list[str]) -> tuple[int | None, int, int | None, str | None]:
    """(bos id, eos id = the end-of-turn token, pad id, chat template) from the protocol chatloom reads for the
    directory (its chatloom.json, else its chat template)."""
    from . import protocols

    template_file = model_dir / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
    try:
        proto = protocols.for_model(model_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"{model_dir}: no chat protocol to export ({e}); GGUF export writes the chat template and "
                          "its end-of-turn token") from e
    eot = proto.end_of_turn_id
    if eot is None or eot >= len(tokens) or tokens[eot] != proto.end_of_turn:
        raise ExportError(f"{model_dir}: the end-of-turn token {proto.end_of_turn!r} is not in the model's vocabulary")
    if template is None:
        template = proto.chat_template
    tok = proto.tokenizer
    pad = tok.token_id(tok.pad_token) if tok.pad_token else None
    return tok.bos_token_id, eot, pad if pad is not None else tok.bos_token_id, template


# ------------------------------------------------------------------------------------------------ writing
def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of q_proj / k_proj (weight or bias) from HF's rotary layout (the two halves of each head apart) to
    llama.cpp's (the halves interleaved, row pairs rotated together)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(hp: dict) -> np.ndarray:
    """Llama 3.1's per-frequency rope scaling factors, which llama.cpp reads from the `rope_freqs` tensor."""
    s, dim, base = hp["rope_scaling"], hp["head_dim"], hp["rope_freq_base"]
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old = float(s.get("original_max_position_embeddings", 8192))
    wavelen = 2 * np.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    smooth = (old / wavelen - low) / (high - low)
    out = np.where(wavelen < old / high, 1.0,
                   np.where(wavelen > old / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def _nbytes(shape: tuple[int, ...], ttype: int) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[ttype]
    return int(np.prod(shape)) // block * size


def _tensor_data(p: Plan, name: str, hf_name: str, file: Path, ttype: int, handles: dict) -> np.ndarray:
    import gguf
    import torch

    if name == "rope_freqs.weight":
        return llama3_rope_factors(p.hparams)
    if file not in handles:
        from safetensors import safe_open

        handles.clear()  # one shard open at a time
        handles[file] = safe_open(str(file), framework="pt")
    t = handles[file].get_tensor(hf_name).to(torch.float32).numpy()
    if p.permute and (".attn_q." in name or ".attn_k." in name):
        t = llama_cpp_permute(t, p.hparams["head_count"] if ".attn_q." in name else p.hparams["head_count_kv"])
    if ttype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(t, dtype=np.float32)
    if ttype == gguf.GGMLQuantizationType.F16:
        if np.abs(t).max(initial=0.0) > MAX_F16:
            raise ExportError(f"{hf_name}: values beyond float16's range ({MAX_F16}); export with --type q8_0")
        return np.ascontiguousarray(t, dtype=np.float16)
    return gguf.quants.quantize(t, gguf.GGMLQuantizationType(ttype))


def _write_metadata(w, p: Plan, qtype: str) -> None:
    import gguf

    hp = p.hparams
    w.add_name(str(hp["name"]))
    w.add_context_length(hp["context_length"])
    w.add_embedding_length(hp["embedding_length"])
    w.add_block_count(hp["block_count"])
    w.add_feed_forward_length(hp["feed_forward_length"])
    w.add_head_count(hp["head_count"])
    w.add_head_count_kv(hp["head_count_kv"])
    if hp["head_dim"] != hp["embedding_length"] // hp["head_count"]:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_rope_freq_base(hp["rope_freq_base"])
    scaling = hp["rope_scaling"]
    if scaling and scaling["type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_vocab_size(hp["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(p.pre)
    w.add_token_list(p.tokens)
    w.add_token_types(p.types)
    w.add_token_merges(p.merges)
    if p.bos_id is not None:
        w.add_bos_token_id(p.bos_id)
    w.add_eos_token_id(p.eos_id)
    w.add_eot_token_id(p.eos_id)
    if p.pad_id is not None:
        w.add_pad_token_id(p.pad_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if p.chat_template:
        w.add_chat_template(p.chat_template)


def export_gguf(model_dir: str | Path, out: str | Path, qtype: str = "f16", *, pre: str | None = None) -> Path:
    """Write `model_dir` (a Llama-family HF directory with a chat protocol) to the GGUF file `out` (atomically).
    `qtype`: "f16" or "q8_0". Raises ExportError with the file and field for anything it cannot export."""
    import gguf

    p = plan(model_dir, qtype, pre=pre)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    w = gguf.GGUFWriter(str(tmp), p.arch)
    try:
        _write_metadata(w, p, qtype)
        for name, _, _, shape, ttype in p.tensors:
            w.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, ttype), raw_dtype=ttype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        handles: dict = {}
        for name, hf_name, file, _, ttype in p.tensors:
            w.write_tensor_data(_tensor_data(p, name, hf_name, file, ttype, handles))
        handles.clear()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out
