"""`chatloom eval`: evaluate a model directory on a held-out conversation file, optionally side by side with another."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def eval_command(
    model: Path = typer.Option(..., "--model", help="Model directory (HF format; chatloom.json or chat template)."),
    data: Path = typer.Option(None, "--data", help="Held-out conversations (JSONL/Parquet). Default: the embedded held-out set."),
    compare: Path = typer.Option(None, "--compare", help="A second model directory, evaluated side by side."),
    json_out: Path = typer.Option(None, "--json", help="Write the full results (metrics and every reply) as JSON."),
    html_out: Path = typer.Option(None, "--html", help="Write a self-contained HTML report."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Generation limit per reply (adherence: stop within it)."),
):
    """Held-out loss, protocol adherence and probes (identity, arithmetic, refusals, false refusals)."""
    from ..conversation import ValidationError
    from ..quickstart.dataset import HELDOUT_PATH
    from . import evaluate, metrics_table, to_html

    data = data or HELDOUT_PATH
    reports = []
    for m in [model] + ([compare] if compare else []):
        try:
            reports.append(evaluate(m, data, max_tokens=max_tokens, label=m.name))
        except (ValidationError, FileNotFoundError, ValueError) as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from e
    console.print(metrics_table(reports, title=f"chatloom eval · {data}"))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(reports if compare else reports[0], indent=1, ensure_ascii=False), encoding="utf-8")
        console.print(f"wrote {json_out}")
    if html_out:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(to_html(reports), encoding="utf-8")
        console.print(f"wrote {html_out}")
