"""`chatloom eval`: evaluate a model directory on a held-out conversation file or your own probe file, optionally side
by side with another model (paired test of the difference) and with the imitation analysis against a training set."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from ..cli_error import fail
from ..serve.cli import QUANTIZE_HELP, Quantize

console = Console()


def eval_command(
    model: Path = typer.Option(..., "--model", help="Model directory (HF format; chatloom.json or chat template)."),
    data: Path = typer.Option(None, "--data", help="Held-out conversations (JSONL/Parquet) for the loss and, without "
                              "--probes, the probes. Default: the embedded held-out set (none with --probes)."),
    probes: Path = typer.Option(None, "--probes", help="Your own probes (JSONL: prompt, expect, must_refuse, identity; "
                                "see chatloom/evals/examples/probes.jsonl)."),
    compare: Path = typer.Option(None, "--compare", help="A second model directory, evaluated side by side."),
    imitation: bool = typer.Option(False, "--imitation", help="Imitation analysis: each answer against the nearest "
                                   "training answer (needs --train)."),
    train: Path = typer.Option(None, "--train", help="The training conversations (JSONL/Parquet) for --imitation."),
    train_sample: int = typer.Option(100, "--train-sample", help="How many training prompts --imitation asks again."),
    threshold: float = typer.Option(0.5, "--threshold", help="--imitation: similarity at which an answer is recited."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --imitation training sample."),
    json_out: Path = typer.Option(None, "--json", help="Write the full results (metrics and every reply) as JSON."),
    html_out: Path = typer.Option(None, "--html", help="Write a self-contained HTML report."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Generation limit per reply (adherence: stop within it)."),
    quantize: Quantize = typer.Option(Quantize.none, "--quantize", help=QUANTIZE_HELP + " Applies to generated replies (probes, adherence, imitation); "
                                 "the held-out loss uses the float weights."),
):
    """Held-out loss, protocol adherence and probes (identity, arithmetic, refusals, false refusals), every rate with
    its 95% interval; with --compare, whether the difference is beyond noise; with --imitation, what was copied."""
    from ..conversation import ValidationError
    from ..quickstart.dataset import HELDOUT_PATH
    from . import compare as compare_reports
    from . import evaluate, imitation_table, load_probes, metrics_table, to_html
    from .generate import load_engine
    from .imitation import TrainingIndex, analyse, heldout_pairs

    if imitation and train is None:
        fail("--imitation needs --train TRAIN.jsonl (the conversations the model was trained on)")
    if not 0 < threshold <= 1:
        fail(f"--threshold must be in (0, 1], got {threshold}")
    if data is None and probes is None:
        data = HELDOUT_PATH
    probe_list = None
    if probes is not None:  # validated before any model is loaded
        try:
            probe_list = load_probes(probes)
        except (ValidationError, FileNotFoundError) as e:
            fail(e)
    index = None
    if imitation:
        try:
            from ..conversation import load

            train_convs = list(load(train))
            index = TrainingIndex(train_convs)
        except (ValidationError, FileNotFoundError, ValueError) as e:
            fail(e)
    reports = []
    for m in [model] + ([compare] if compare else []):
        try:
            engine = load_engine(m, quantize=quantize.value)
            report = evaluate(m, data, probes=probe_list, max_tokens=max_tokens, label=m.name, engine=engine)
            if probes is not None:
                report["probes_file"] = str(probes)
            if quantize is not Quantize.none:
                report["quantize"] = quantize.value
            if imitation:
                report["imitation"] = analyse(engine, train_convs, heldout_pairs(report), n_train=train_sample,
                                              seed=seed, threshold=threshold, max_tokens=max_tokens, index=index)
                report["imitation"]["train"] = str(train)
            reports.append(report)
        except (ValidationError, FileNotFoundError, ValueError) as e:
            fail(e)
    if compare:
        reports[1]["comparison"] = compare_reports(reports[0], reports[1])
    source = ", ".join(str(p) for p in (probes, data) if p is not None)
    console.print(metrics_table(reports, title=f"chatloom eval · {source}"))
    for r in reports:
        if r.get("imitation"):
            console.print(imitation_table(r["imitation"], title=f"imitation · {r['label']} · training set {train}"))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(reports if compare else reports[0], indent=1, ensure_ascii=False), encoding="utf-8")
        console.print(f"wrote {json_out}")
    if html_out:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(to_html(reports), encoding="utf-8")
        console.print(f"wrote {html_out}")
