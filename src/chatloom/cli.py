"""The `chatloom` command: a thin Typer app over the Python API (each stage adds its own sub-commands)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from . import protocols as protocols_mod
from .cli_error import fail
from .conversation import ValidationError
from .conversation import load as load_conversations
from .data import cli as data_cli
from .evals import cli as evals_cli
from .label import cli as label_cli
from .serve import cli as serve_cli
from .synth import cli as synth_cli
from .tokenizers import BUNDLED_TOKENIZER, train_bpe
from .train import cli as train_cli

app = typer.Typer(help="chatloom: post-train language models on conversations.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
tokenizer_app = typer.Typer(help="Tokenizers: train chatloom's own byte-level BPE.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
app.command("chat")(serve_cli.chat); app.command("serve")(serve_cli.serve)  # noqa: E702
app.add_typer(train_cli.app, name="train")
app.add_typer(label_cli.app, name="label")
app.command("synth")(synth_cli.synth)
app.command("eval")(evals_cli.eval_command)
app.add_typer(data_cli.app, name="data")
console = Console()
err = Console(stderr=True, soft_wrap=True)

PACKAGE_DIR = Path(__file__).parent
EXAMPLE = PACKAGE_DIR / "examples" / "seed.jsonl"
DEFAULT_TOKENIZER = BUNDLED_TOKENIZER  # old name, kept importable; the one home is chatloom.tokenizers
resolve_protocol = protocols_mod.resolve  # old name, kept importable; the one home is chatloom.protocols.resolve


@app.command()
def tokens(
    file: Path = typer.Argument(None, help="Conversations (JSONL/Parquet). Default: chatloom's bundled example."),
    protocol: str = typer.Option("gpt4o", "--protocol", "-p", help=f"One of {', '.join(protocols_mod.NAMES)}."),
    tokenizer: str = typer.Option(None, "--tokenizer", "-t", help="tokenizer.json, model dir or .tiktoken file."),
    template: str = typer.Option(None, "--template", help="Jinja chat template (.jinja, tokenizer_config.json, dir): implies hf."),
    html_out: Path = typer.Option(None, "--html", help="Write a self-contained HTML token view here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per conversation."),
    limit: int = typer.Option(0, "--limit", "-n", help="Show at most N conversations (0: all)."),
):
    """Token view: each token as text and id, coloured per message, supervised tokens marked, with counts."""
    from .protocols import view

    file = file or EXAMPLE
    try:
        proto = protocols_mod.resolve(protocol, tokenizer, template)
        convs = list(load_conversations(file))
    except (ValidationError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if limit:
        convs = convs[:limit]
    rendered = proto.render_batch(convs)
    if as_json:
        for c, r in zip(convs, rendered, strict=True):
            sys.stdout.write(view.dumps_json(c, r, proto) + "\n")
    else:
        for c, r in zip(convs, rendered, strict=True):
            console.print(view.to_rich(c, r, proto))
    if html_out:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(view.to_html(zip(convs, rendered, strict=True), proto, title=f"chatloom tokens · {file.name}"),
                            encoding="utf-8")
        (err if as_json else console).print(f"wrote {html_out}")


@app.command()
def check(
    model_dir: Path = typer.Argument(..., help="A model directory (chatloom.json, chat_template.jinja, tokenizer)."),
    data: list[Path] = typer.Option(None, "--data", help="Conversations to check (JSONL/Parquet; default: a built-in "
                                                         "set with unicode, multi-turn and typed control tokens)."),
    gguf: Path = typer.Option(None, "--gguf", help="Also compare the chat template and tokenizer stored in this GGUF."),
    limit: int = typer.Option(100, "--limit", "-n", help="Check at most N conversations of --data."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
):
    """Training/serving parity: chatloom's protocol vs transformers' apply_chat_template (and a GGUF) on the same
    conversations, eos ids, end-of-turn supervision, prompt prefixes. Exit 1 on any mismatch."""
    from .check import check_model

    try:
        report = check_model(model_dir, data=data or None, gguf=gguf, limit=limit)
    except (ValidationError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if as_json:
        import json

        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
    else:
        report.print(console)
    raise typer.Exit(report.exit_code)


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="A Llama-family model directory (chatloom's, SmolLM2, Llama, Mistral, "
                                               "Qwen2) with safetensors weights and a byte-level BPE tokenizer."),
    gguf: Path = typer.Option(..., "--gguf", help="Write this GGUF file (llama.cpp, llama-server, Ollama)."),
    qtype: str = typer.Option("f16", "--type", help="f16 (float16 matrices) or q8_0 (llama.cpp's 8-bit blocks)."),
):
    """A model directory as one GGUF file: weights in llama.cpp's layout, the tokenizer (with the pre-tokenizer
    llama.cpp must use), the chat template, and the end-of-turn token as eos. Check it with `chatloom check MODEL_DIR
    --gguf FILE`."""
    from .export_gguf import ExportError, export_gguf

    try:
        out = export_gguf(model_dir, gguf, qtype)
    except ExportError as e:
        fail(str(e))
    console.print(f"wrote {out} ({qtype}, {out.stat().st_size / 2**20:.1f} MiB)")


@tokenizer_app.command("train")
def tokenizer_train(
    files: list[Path] = typer.Argument(..., help="Plain-text training files."),
    vocab_size: int = typer.Option(8192, "--vocab-size"),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory (Hugging Face tokenizer files)."),
    special: list[str] = typer.Option(["<|endoftext|>"], "--special", help="Special tokens to reserve (first = EOS)."),
):
    """Train a byte-level BPE with the `tokenizers` library and save it as a Hugging Face tokenizer directory."""
    try:
        tok = train_bpe(files, vocab_size, out, special_tokens=special)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    console.print(f"trained a byte-level BPE with {len(tok)} tokens -> {out}")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Where to write the results."),
    model: str = typer.Option(None, "--model", help="Bring your own base: a Hugging Face model directory or a .gguf file "
                                                    "(default: a small chatloom model pretrained here, cached)."),
    minutes: float = typer.Option(15.0, "--minutes", help="Wall-clock budget the training steps are sized to."),
    tiny: bool = typer.Option(False, "--tiny", help="A seconds-long run of a tiny model (tests, smoke checks)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of both training stages (weights, row order); the data and "
                                                      "the held-out probes stay the same. Each seed caches its own base."),
):
    """The main job: base -> SFT on the embedded conversations -> evaluation of both -> report.html."""
    from .quickstart.pipeline import run

    run(out=out, model=model, minutes=minutes, tiny=tiny, seed=seed)


def main():
    app()


if __name__ == "__main__":
    main()
