"""Evaluation reports: a rich table for the terminal and a self-contained HTML page (metrics side by side, then the
same prompts answered by each model), for one model or a comparison."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from ..report_html import CSS, Html, cell, esc, page, table
from .evaluate import ACCEPTANCE, METRICS

__all__ = ["CSS", "metrics_table", "metrics_html", "answers_html", "sections_html", "page", "to_html"]


def fmt(key: str, value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if key == "heldout_loss" else f"{100 * value:.1f}%"


def bar_met(key: str, value) -> bool | None:
    if key not in ACCEPTANCE or value is None:
        return None
    op, bar = ACCEPTANCE[key]
    return value >= bar if op == ">=" else value <= bar


def label_of(report: dict) -> str:
    return report.get("label") or report.get("model", "model")


def metrics_table(reports: Sequence[dict], title: str = "evaluation") -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for r in reports:
        table.add_column(label_of(r), justify="right")
    table.add_column("goal (SFT)", justify="right")
    for key, name, _ in METRICS:
        goal = ACCEPTANCE.get(key)
        table.add_row(name, *[fmt(key, r["metrics"].get(key)) for r in reports],
                      f"{goal[0]} {fmt(key, goal[1])}" if goal else "")
    return table


def metrics_html(reports: Sequence[dict]) -> str:
    rows = []
    for key, name, _ in METRICS:
        cells = []
        for r in reports:
            v = r["metrics"].get(key)
            met = bar_met(key, v) if r is reports[-1] else None  # the bars are for the (last, fine-tuned) model
            cells.append(cell(fmt(key, v), "num" + ("" if met is None else (" ok" if met else " bad"))))
        goal = ACCEPTANCE.get(key)
        rows.append([name, *cells, cell(f"{goal[0]} {fmt(key, goal[1])}" if goal else "", "num")])
    rows.append([cell("conversations evaluated", "meta"), *(cell(r["n"], "num") for r in reports), ""])
    return table(["metric", *(label_of(r) for r in reports), "goal"], rows)


def prompt_text(sample: dict) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in sample["prompt"] if m["role"] != "system")


def answers_html(reports: Sequence[dict], per_kind: int = 4) -> str:
    """The same prompts answered by each model: a few per probe kind, so every category is shown."""
    first = reports[0]["samples"]
    chosen, seen = [], {}
    for i, s in enumerate(first):
        k = s.get("kind") or "other"
        if seen.get(k, 0) < per_kind:
            seen[k] = seen.get(k, 0) + 1
            chosen.append(i)
    rows = []
    for i in chosen:
        s = first[i]
        cells = []
        for r in reports:
            t = r["samples"][i]
            cls = "" if t["passed"] is None else (" ok" if t["passed"] else " bad")
            stop = "stopped at end of turn" if t["stopped"] else f"no end of turn ({t['finish_reason']})"
            cells.append(cell(Html(f"{esc(t['reply'])}<div class='meta'>{esc(stop)}</div>"), "reply" + cls))
        rows.append([cell(s.get("kind") or "", "meta"), cell(prompt_text(s), "reply"), cell(s["expect"], "reply"), *cells])
    return table(["probe", "prompt", "reference", *(label_of(r) for r in reports)], rows)


def sections_html(reports: Sequence[dict]) -> str:
    return (f"<h2>Metrics</h2>{metrics_html(reports)}"
            f"<h2>Side by side</h2><p class='meta'>Greedy replies to held-out prompts; green: probe passed, red: failed.</p>"
            f"{answers_html(reports)}")


def to_html(reports: Sequence[dict], title: str = "chatloom evaluation") -> str:
    data = ", ".join(sorted({esc(r.get("data", "")) for r in reports}))
    return page(title, f"<p class='meta'>data: {data}</p>{sections_html(reports)}")
