"""`chatloom data ...`: import, validate, stats, show and mix (thin: it calls chatloom.data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from ..cli_error import fail
from ..conversation import Rejects, ValidationError, load, save

app = typer.Typer(help="Data: import public formats, validate, count, show, and build mixtures.", no_args_is_help=True)
console = Console()


@app.command("import")
def import_(
    inputs: list[str] = typer.Argument(..., help="Input files (or one hf:NAME[:split])."),
    fmt: str = typer.Option(..., "--from", help="openai | sharegpt | alpaca | selfinstruct | oasst | ultrachat | hh | parquet | hf:NAME[:split]"),
    out: Path = typer.Option(..., "-o", "--out", help="Output .jsonl or .parquet."),
    on_error: str = typer.Option("fail", "--on-error", help="fail | skip (counted, written to --rejects)."),
    rejects: Path = typer.Option(None, "--rejects", help="Rejects file (default: OUT.rejects.jsonl when skipping)."),
    threads: str = typer.Option("best", "--threads", help="OASST: best | top-k:N | all."),
    keep_synthetic: bool = typer.Option(False, "--keep-synthetic", help="OASST: keep synthetic messages."),
    keep_rejected: bool = typer.Option(False, "--keep-rejected", help="OASST: keep messages reviewers rejected."),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="OASST: share of trees written to OUT.val.*"),
    license: str = typer.Option(None, "--license", help="Licence to record when the source does not state one."),
):
    """Import conversations from a public format into Conversation records (JSONL or Parquet)."""
    from .importers import ImportReport, convert

    if on_error not in ("fail", "skip"):
        fail("--on-error must be fail or skip")
    rejects_path = rejects or out.with_name(out.stem + ".rejects.jsonl")
    if rejects_path.exists():
        rejects_path.unlink()
    sink = Rejects(rejects_path if on_error == "skip" else None)
    report = ImportReport()
    options = {"threads_mode": threads, "keep_synthetic": keep_synthetic, "keep_rejected": keep_rejected} \
        if fmt == "oasst" else {}
    splits = [("train", out), ("validation", out.with_name(out.stem + ".val" + out.suffix))] \
        if fmt == "oasst" and val_fraction > 0 else [(None, out)]

    def conversations(split):
        for path in inputs:
            extra = {**options, "val_fraction": val_fraction, "split": split} if fmt == "oasst" else {}
            yield from convert(fmt, Path(path), license=license, on_error=on_error, rejects=sink, report=report, **extra)

    try:
        counts = {str(dest): save(conversations(split), dest) for split, dest in splits}
    except (ValidationError, FileNotFoundError, ValueError, RuntimeError) as e:
        fail(str(e))
    summary = {**report.to_dict(), "outputs": counts}
    if sink.count:
        summary["rejects_file"] = str(rejects_path)
    console.print_json(json.dumps(summary))


@app.command()
def validate(files: list[Path] = typer.Argument(...)):
    """Check every record; print file:line: field: reason for each bad one; exit 1 if any."""
    from .inspect import validate as run

    try:
        good, errors = run(files)
    except FileNotFoundError as e:
        fail(str(e))
    for e in errors:
        console.print(str(e), highlight=False, soft_wrap=True)
    console.print(f"{good} valid, {len(errors)} invalid")
    raise typer.Exit(1 if errors else 0)


@app.command()
def stats(
    files: list[Path] = typer.Argument(...),
    protocol: str = typer.Option("chatml", "--protocol", "-p"),
    tokenizer: str = typer.Option(None, "--tokenizer", "-t", help="Default: chatloom's bundled BPE."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Rows, turns, tokens per role under a protocol/tokenizer, languages, tags, sources, licences."""
    from ..protocols import resolve
    from .inspect import stats as run

    try:
        result = run(files, resolve(protocol, tokenizer))
    except (ValidationError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        return
    from rich.table import Table

    table = Table(title=", ".join(map(str, files)))
    table.add_column("what")
    table.add_column("value")
    for k, v in result.items():
        table.add_row(k, json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else str(v))
    console.print(table)


@app.command()
def show(file: Path = typer.Argument(...), n: int = typer.Option(3, "--n", "-n")):
    """Print the first N conversations."""
    from rich.panel import Panel

    try:
        for i, conv in enumerate(load(file)):
            if i >= n:
                break
            text = "\n".join(f"{m.role}: {m.content}" for m in conv.messages)
            console.print(Panel(text, title=f"{conv.id} · {conv.meta.get('source', '')}", title_align="left"),
                          markup=False)
    except (ValidationError, FileNotFoundError) as e:
        fail(str(e))


@app.command()
def mix(recipe: Path = typer.Argument(..., help="Recipe YAML."), out: Path = typer.Option(..., "-o", "--out"),
        progress: bool = typer.Option(True, "--progress/--no-progress")):
    """Build a mixture: Parquet shards, mixture.json ledger and report.html."""
    from .mix import RecipeError, build_mixture

    try:
        ledger = build_mixture(recipe, out, progress=progress)
    except (RecipeError, ValidationError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    console.print(f"mixture: {ledger['rows']['train']} train, {ledger['rows']['validation']} validation rows -> {out}")
