"""Base models for training: chatloom's named Llama configs, any transformers causal-LM directory (or Hub id), GGUF files.

Also the one place where a protocol's new control tokens meet the model: `fit_vocab` grows the embedding and output
matrices to the tokenizer's size and starts the new rows from the mean of the existing ones (not random noise, which
would make the first steps spend their budget undoing it). A trained model's new end-of-turn token starts as a copy of
its end-of-text token (`end_of_turn_like`): it then ends a turn where it would end a text from the first step, where a
mean row starts at the average logit and must be learned from there (Gemma 3 270M base, 46 SFT steps of the quickstart
with mean rows: it never ended a turn).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..tokenizers import BUNDLED_TOKENIZER, Tokenizer, load_tokenizer  # noqa: F401 - BUNDLED_TOKENIZER: old import path

#: Llama shapes, vocabulary size filled in from the tokenizer. "tiny" (~1M params with chatloom's 8k BPE) is for tests,
#: "small" (~7M) for the quickstart and benchmarks.
CONFIGS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, max_position_embeddings=2048),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=768, max_position_embeddings=2048),
}


class ModelNotFound(FileNotFoundError):
    """The model argument names no directory, GGUF file, named config or reachable Hub model."""


def build_model(name: str, vocab_size: int, seed: int | None = None):
    """A freshly initialised Llama from `CONFIGS[name]`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in CONFIGS:
        raise ModelNotFound(f"{name!r} is not a named config ({', '.join(CONFIGS)})")
    if seed is not None:
        torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=False, **CONFIGS[name])
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def load_model(source: str | Path, *, tokenizer: str | Path | Tokenizer | None = None, seed: int | None = None):
    """(model, tokenizer) from a named config, a model directory, a `.gguf` file or a Hub id. Weights in float32.

    A named config uses `tokenizer` (default: chatloom's bundled BPE). A GGUF model is dequantized by transformers; its
    leftover `hf_quantizer` is cleared so it trains (and saves) as a plain model."""
    from transformers import AutoModelForCausalLM

    from ..tokenizers import HFTokenizer

    text = str(source)
    if text in CONFIGS:
        tok = load_tokenizer(tokenizer or BUNDLED_TOKENIZER)
        return build_model(text, len(tok), seed), tok
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path}: not a model directory (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa")
        return model, load_tokenizer(tokenizer or path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"{path}: no such GGUF file")
        model, hf_tok = dequantized_gguf(path, with_tokenizer=tokenizer is None)
        return model, HFTokenizer(hf_tok, str(path)) if tokenizer is None else load_tokenizer(tokenizer)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ModelNotFound(f"{text}: no such model directory or GGUF file, and not a named config "
                            f"({', '.join(CONFIGS)}) or a Hub id (owner/name)")
    try:
        model = AutoModelForCausalLM.from_pretrained(text, dtype=torch.float32)
        return model, load_tokenizer(tokenizer or text)
    except Exception as e:  # noqa: BLE001 - offline, gated, missing: the message is what the user needs
        raise ModelNotFound(f"{text}: not a local model and not loadable from the Hugging Face Hub ({e})") from e


def dequantized_gguf(path: str | Path, with_tokenizer: bool = True):
    """(a plain float32 transformers model, its transformers tokenizer or None) from a GGUF file, the header parsed
    once. The quantizer transformers leaves behind is cleared: else every model saved from it says "gguf" and cannot
    be saved again once reloaded (quickstart --model x.gguf)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    with one_gguf_parse():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name) if with_tokenizer else None
    return model, tok


@contextlib.contextmanager
def one_gguf_parse():
    """While it is open, every `gguf.GGUFReader(path)` of the same file is one reader, parsed once.

    transformers' GGUF loader builds a new reader for the config, again for the weights and again for the tokenizer
    (`from gguf import GGUFReader` inside each call), and a reader decodes every metadata array into numpy views: for
    Gemma 3's 262k token strings, scores and types that parse was most of the ~45 CPU-s of loading a 253 MB file (the
    dequantization itself a few seconds). The readers only read (a read-only memory map), so sharing one is safe."""
    import gguf

    original = gguf.GGUFReader
    readers: dict = {}

    def shared(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield readers
    finally:
        gguf.GGUFReader = original


def fit_vocab(model, vocab_size: int, like: dict[int, int] | None = None) -> int:
    """Grow input/output embeddings to `vocab_size` rows, new rows = mean of the old rows, except the new ids of `like`
    (new id -> old id), which start as a copy of that old row. Returns rows added."""
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return 0
    like = {new: src for new, src in (like or {}).items() if old <= new < vocab_size and 0 <= src < old}
    in_mean = model.get_input_embeddings().weight.detach()[:old].mean(0)
    out = model.get_output_embeddings()
    out_mean = out.weight.detach()[:old].mean(0) if out is not None else None
    out_bias = out.bias.detach()[:old].mean() if out is not None and getattr(out, "bias", None) is not None else None
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = in_mean
        out = model.get_output_embeddings()
        untied = out is not None and out.weight is not emb
        if untied:
            out.weight[old:] = out_mean
            if out_bias is not None:
                out.bias[old:] = out_bias
        for new, src in like.items():
            emb[new] = emb[src]
            if untied:
                out.weight[new] = out.weight[src]
                if out_bias is not None:
                    out.bias[new] = out.bias[src]
    return vocab_size - old


def end_of_turn_like(protocol, model) -> dict[int, int]:
    """`fit_vocab`'s `like` for a trained `model`: {end-of-turn id: end-of-text id} when the protocol's end-of-turn
    token is new to the model and its tokenizer's end-of-text token is not; else {}."""
    rows = model.get_input_embeddings().weight.shape[0]
    eot, eos = protocol.end_of_turn_id, protocol.tokenizer.eos_token_id
    return {eot: eos} if eos is not None and eos < rows <= eot else {}


def make_model_dir(out_dir: str | Path, protocol: str = "chatml", config: str = "tiny", seed: int = 0) -> Path:
    """An untrained model directory (weights, tokenizer with control tokens, chat template, chatloom.json): a test base."""
    from .. import protocols
    from .export import export_model

    model, tok = load_model(config, seed=seed)
    proto = protocols.get(protocol, tok)
    fit_vocab(model, len(tok))
    return export_model(model, proto, out_dir)


def model_protocol(source: str | Path) -> str | None:
    """The protocol a chatloom-written model directory was trained with (its chatloom.json), else None."""
    from .. import model_meta

    return model_meta.protocol(source)
