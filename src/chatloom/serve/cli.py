"""`chatloom chat` and `chatloom serve`: thin commands over the Engine, the terminal session and the HTTP app."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from ..cli_error import fail


class Quantize(StrEnum):
    """`--quantize` values: "none" multiplies by the float weights (in `--dtype`); see `chatloom.quant` for the others."""

    none = "none"
    int8 = "int8"
    int4 = "int4"


#: `chatloom serve`'s weights when `--quantize` is not given (Llama-family models; other models are served as saved).
SERVE_QUANTIZE = "int4"
QUANTIZE_HELP = ("Weights: none (float, in --dtype) | int8 (per-channel int8, float32 activations) | int4 (group-wise int4 "
                 "like llama.cpp's Q4_1, bfloat16 activations; llama, mistral and qwen2 models).")


def quantize_option(default: Quantize | None, default_text: str):
    return typer.Option(default, "--quantize", show_default=default_text, help=QUANTIZE_HELP)


def _engine(model: Path, protocol: str | None, dtype: str | None, max_context: int | None, quantize: str | None = None,
            threads: int = 0, default_quantize: str | None = None):
    """Load the engine; `quantize` None means the command's default (`default_quantize` for the models the lean decoder
    supports, the saved weights otherwise)."""
    import torch

    from ..engine import Engine

    if threads:
        torch.set_num_threads(threads)
    if quantize is None and default_quantize is not None and not _lean(model):
        default_quantize = None
    quantize = getattr(quantize, "value", quantize) or default_quantize
    try:
        return Engine.from_pretrained(model, protocol=protocol, dtype=dtype, max_context=max_context,
                                      quantize=None if quantize == "none" else quantize)
    except (FileNotFoundError, OSError, ValueError) as e:
        fail(f"cannot load {model}: {e}")


def _lean(model: Path) -> bool:
    """Whether the lean decoder (and so every --quantize value) can take this model directory, from its config."""
    from transformers import AutoConfig

    from ..engine_llama import LlamaDecoder

    try:
        config = AutoConfig.from_pretrained(str(model))
    except (OSError, ValueError):
        return True  # let loading report what is wrong
    return LlamaDecoder.supports_config(config)


def chat(
    model: Path = typer.Option(..., "--model", "-m", help="Model directory (HF format, e.g. a chatloom training output)."),
    protocol: str = typer.Option(None, "--protocol", "-p", help="Override the protocol (default: the model's own)."),
    system: str = typer.Option(None, "--system", help="System message."),
    temperature: float = typer.Option(0.7, "--temperature"),
    top_p: float = typer.Option(0.95, "--top-p"),
    top_k: int = typer.Option(0, "--top-k"),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty"),
    max_tokens: int = typer.Option(512, "--max-tokens"),
    seed: int = typer.Option(None, "--seed"),
    dtype: str = typer.Option(None, "--dtype", help="float32 | bfloat16 (default: as saved)."),
    max_context: int = typer.Option(None, "--max-context", help="Context window (default: the model's)."),
    quantize: Quantize = quantize_option(None, "none"),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: default; 1 is often faster on a busy CPU)."),
):
    """Chat with a model in the terminal (streaming; /system TEXT, /reset, /save FILE, /tokens, /quit)."""
    from ..engine import SamplingParams
    from .repl import run

    engine = _engine(model, protocol, dtype, max_context, quantize, threads)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            repetition_penalty=repetition_penalty, seed=seed)
    run(engine, params, system)


def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Model directory (HF format)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    api_key: str = typer.Option(None, "--api-key", envvar="CHATLOOM_API_KEY", help="Require Authorization: Bearer KEY on /v1."),
    protocol: str = typer.Option(None, "--protocol", "-p", help="Override the protocol (default: the model's own)."),
    dtype: str = typer.Option(None, "--dtype", help="float32 | bfloat16 (default: as saved)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Rows decoded together (continuous batching: a new request joins the running batch at the next step)."),
    max_context: int = typer.Option(None, "--max-context"),
    quantize: Quantize = quantize_option(None, f"{SERVE_QUANTIZE} for llama/mistral/qwen2 models, none for others"),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: default; 1 is often faster on a busy CPU)."),
    name: str = typer.Option(None, "--name", help="Model name in the API (default: the directory name)."),
):
    """Serve a model: OpenAI-compatible API at /v1 and a chat page at /."""
    import uvicorn

    from .app import create_app

    engine = _engine(model, protocol, dtype, max_context, quantize, threads, default_quantize=SERVE_QUANTIZE)
    app = create_app(engine, api_key=api_key, model_name=name or model.resolve().name, max_batch=max_batch)
    typer.echo(f"chatloom serving {model} at http://{host}:{port}/ (API: http://{host}:{port}/v1)")
    uvicorn.run(app, host=host, port=port, log_level="info")
