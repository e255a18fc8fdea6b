"""Evaluation reports: a rich table for the terminal and a self-contained HTML page (metrics side by side, then the
same prompts answered by each model), for one model or a comparison."""

from __future__ import annotations

import html
from collections.abc import Sequence

from rich.table import Table

from .evaluate import ACCEPTANCE, METRICS

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111;max-width:1200px}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f4f6}.num{text-align:right;font-variant-numeric:tabular-nums}.ok{background:#dcfce7}.bad{background:#fee2e2}
.reply{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;max-width:380px}
.meta{color:#6b7280;font-size:12px}
"""


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
    head = "".join(f"<th>{html.escape(label_of(r))}</th>" for r in reports)
    rows = []
    for key, name, _ in METRICS:
        cells = []
        for r in reports:
            v = r["metrics"].get(key)
            met = bar_met(key, v) if r is reports[-1] else None  # the bars are for the (last, fine-tuned) model
            cls = "" if met is None else (" ok" if met else " bad")
            cells.append(f"<td class='num{cls}'>{fmt(key, v)}</td>")
        goal = ACCEPTANCE.get(key)
        rows.append(f"<tr><td>{name}</td>{''.join(cells)}<td class='num'>{f'{goal[0]} {fmt(key, goal[1])}' if goal else ''}</td></tr>")
    counts = "".join(f"<td class='num'>{r['n']}</td>" for r in reports)
    rows.append(f"<tr><td class='meta'>conversations evaluated</td>{counts}<td></td></tr>")
    return f"<table><tr><th>metric</th>{head}<th>goal</th></tr>{''.join(rows)}</table>"


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
    head = "".join(f"<th>{html.escape(label_of(r))}</th>" for r in reports)
    rows = []
    for i in chosen:
        s = first[i]
        cells = []
        for r in reports:
            t = r["samples"][i]
            cls = "" if t["passed"] is None else (" ok" if t["passed"] else " bad")
            stop = "stopped at end of turn" if t["stopped"] else f"no end of turn ({t['finish_reason']})"
            cells.append(f"<td class='reply{cls}'>{html.escape(t['reply'])}<div class='meta'>{stop}</div></td>")
        rows.append(f"<tr><td class='meta'>{html.escape(s.get('kind') or '')}</td><td class='reply'>{html.escape(prompt_text(s))}"
                    f"</td><td class='reply'>{html.escape(s['expect'])}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>probe</th><th>prompt</th><th>reference</th>{head}</tr>{''.join(rows)}</table>"


def sections_html(reports: Sequence[dict]) -> str:
    return (f"<h2>Metrics</h2>{metrics_html(reports)}"
            f"<h2>Side by side</h2><p class='meta'>Greedy replies to held-out prompts; green: probe passed, red: failed.</p>"
            f"{answers_html(reports)}")


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def to_html(reports: Sequence[dict], title: str = "chatloom evaluation") -> str:
    data = ", ".join(sorted({html.escape(r.get("data", "")) for r in reports}))
    return page(title, f"<p class='meta'>data: {data}</p>{sections_html(reports)}")
