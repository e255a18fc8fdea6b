"""Evaluation reports: a rich table for the terminal and a self-contained HTML page (metrics side by side, then the
same prompts answered by each model), for one model or a comparison.

Every rate is shown with its 95% Wilson interval and n (from the report's `rates`); when the last report carries a
`comparison` (two models, same probes), a last column gives the difference and McNemar's exact p-value, and says
whether the difference is larger than the noise. Reports without `rates` (written before they existed) show the bare
numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from ..report_html import CSS, Html, cell, esc, page, table
from .evaluate import ACCEPTANCE, METRICS

__all__ = ["CSS", "metrics_table", "metrics_html", "answers_html", "sections_html", "page", "to_html",
           "imitation_html", "imitation_table"]

OPTIONAL = {"expect_match"}  # rows shown only when some report measured them


def fmt(key: str, value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if key == "heldout_loss" else f"{100 * value:.1f}%"


def fmt_interval(entry: dict | None) -> str:
    """ "95% CI 91.3–99.0%, n=64" for a rate entry ({"rate", "n", "ci95", ...}); "" when there is none."""
    if not entry or entry.get("ci95") is None:
        return ""
    lo, hi = entry["ci95"]
    return f"95% CI {100 * lo:.1f}–{100 * hi:.1f}%, n={entry['n']}"


def rate_entry_of(report: dict, key: str) -> dict | None:
    return (report.get("rates") or {}).get(key)


def fmt_difference(entry: dict | None) -> str:
    """The paired comparison of one metric: "+12.5 pts, p=0.003: beyond noise" (McNemar exact, two-sided)."""
    if not entry or entry.get("difference") is None:
        return ""
    verdict = "beyond noise" if entry["significant"] else "within noise"
    return f"{100 * entry['difference']:+.1f} pts, p={entry['p_value']:.2g}: {verdict}"


def shown_metrics(reports: Sequence[dict]) -> list[tuple[str, str, bool]]:
    """The metric rows to show: the quickstart's always, an optional one (expect_match) only when measured."""
    return [(k, name, hib) for k, name, hib in METRICS
            if k not in OPTIONAL or any(r["metrics"].get(k) is not None for r in reports)]


def comparison_of(reports: Sequence[dict]) -> dict | None:
    return reports[-1].get("comparison") if len(reports) > 1 else None


def bar_met(key: str, value) -> bool | None:
    if key not in ACCEPTANCE or value is None:
        return None
    op, bar = ACCEPTANCE[key]
    return value >= bar if op == ">=" else value <= bar


def label_of(report: dict) -> str:
    return report.get("label") or report.get("model", "model")


def metrics_table(reports: Sequence[dict], title: str = "evaluation") -> Table:
    comparison = comparison_of(reports)
    table = Table(title=title, caption="rates: 95% Wilson interval and n" + (
        f"; {label_of(reports[-1])} − {label_of(reports[0])}: paired McNemar exact test, p < 0.05 = beyond noise"
        if comparison else ""))
    table.add_column("metric")
    for r in reports:
        table.add_column(label_of(r), justify="right")
    table.add_column("goal (SFT)", justify="right")
    if comparison:
        table.add_column(f"{label_of(reports[-1])} − {label_of(reports[0])}", justify="right")
    for key, name, _ in shown_metrics(reports):
        goal = ACCEPTANCE.get(key)
        cells = []
        for r in reports:
            interval = fmt_interval(rate_entry_of(r, key))
            cells.append(fmt(key, r["metrics"].get(key)) + (f"\n[dim]{interval}[/]" if interval else ""))
        row = [name, *cells, f"{goal[0]} {fmt(key, goal[1])}" if goal else ""]
        if comparison:
            row.append(fmt_difference(comparison["metrics"].get(key)))
        table.add_row(*row)
    return table


def metrics_html(reports: Sequence[dict]) -> str:
    comparison = comparison_of(reports)
    rows = []
    for key, name, _ in shown_metrics(reports):
        cells = []
        for r in reports:
            v = r["metrics"].get(key)
            met = bar_met(key, v) if r is reports[-1] else None  # the bars are for the (last, fine-tuned) model
            interval = fmt_interval(rate_entry_of(r, key))
            content = Html(f"{esc(fmt(key, v))}<div class='meta'>{esc(interval)}</div>") if interval else fmt(key, v)
            cells.append(cell(content, "num" + ("" if met is None else (" ok" if met else " bad"))))
        goal = ACCEPTANCE.get(key)
        diff = [cell(fmt_difference(comparison["metrics"].get(key)), "num")] if comparison else []
        rows.append([name, *cells, cell(f"{goal[0]} {fmt(key, goal[1])}" if goal else "", "num"), *diff])
    rows.append([cell("conversations evaluated", "meta"), *(cell(r["n"], "num") for r in reports), "",
                 *([""] if comparison else [])])
    head = ["metric", *(label_of(r) for r in reports), "goal"]
    if comparison:
        head.append(f"{label_of(reports[-1])} − {label_of(reports[0])}")
    note = ""
    if any(r.get("rates") for r in reports):
        note = ("<p class='meta'>Each rate with its 95% Wilson score interval and the number of probes n it counts"
                + ("; the last column is the difference on the same probes with McNemar's exact (paired) p-value: "
                   "p &lt; 0.05 is a difference beyond the noise of this many probes" if comparison else "") + ".</p>")
    return table(head, rows) + note


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
            thought = f"<div class='meta'>{esc(t['reasoning'])}</div>" if t.get("reasoning") is not None else ""
            cells.append(cell(Html(f"{thought}{esc(t['reply'])}<div class='meta'>{esc(stop)}</div>"), "reply" + cls))
        rows.append([cell(s.get("kind") or "", "meta"), cell(prompt_text(s), "reply"), cell(s["expect"], "reply"), *cells])
    return table(["probe", "prompt", "reference", *(label_of(r) for r in reports)], rows)


def sections_html(reports: Sequence[dict]) -> str:
    imitation = "".join(f"<h2>Imitation: {esc(label_of(r))}</h2>{imitation_html(r['imitation'])}"
                        for r in reports if r.get("imitation"))
    return (f"<h2>Metrics</h2>{metrics_html(reports)}"
            f"<h2>Side by side</h2><p class='meta'>Greedy replies to held-out prompts; green: probe passed, red: failed.</p>"
            f"{answers_html(reports)}{imitation}")


def to_html(reports: Sequence[dict], title: str = "chatloom evaluation") -> str:
    data = ", ".join(sorted({esc(x) for r in reports for x in (r.get("probes_file"), r.get("data", "")) if x is not None}))
    return page(title, f"<p class='meta'>data: {data}</p>{sections_html(reports)}")


GROUPS = (("held_out", "prompts not in training (held-out)"), ("in_training", "prompts seen in training"))


def pick_spread(items: list, n: int) -> list:
    """At most `n` items evenly spaced over the list (keeps its order)."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


def imitation_summary_html(im: dict) -> str:
    rows = []
    for group, name in GROUPS:
        entry = im["rates"][group]
        sim, reuse = im["mean_similarity"][group], im["phrase_reuse"][group]
        rows.append(f"<tr><td>{name}</td><td class='num'>{entry['n']}</td>"
                    f"<td class='num'>{fmt('rate', entry['rate'])}<div class='meta'>{fmt_interval(entry)}</div></td>"
                    f"<td class='num'>{'–' if sim is None else f'{sim:.2f}'}</td>"
                    f"<td class='num'>{fmt('rate', reuse)}</td></tr>")
    return ("<table><tr><th>prompts</th><th>n</th><th>recitation (similarity &ge; "
            f"{im['threshold']:g})</th><th>mean similarity to the nearest training answer</th>"
            f"<th>phrase reuse (answer 3-grams found in training answers)</th></tr>{''.join(rows)}</table>")


def imitation_html(im: dict, per_group: int = 16) -> str:
    """The imitation analysis: the summary, then answers side by side with the closest training answer under each."""
    intro = (f"<p class='meta'>Training set: {esc(str(im.get('train', '')))} ({im.get('train_conversations', '?')}"
             f" conversations, {im.get('train_answers', '?')} distinct answers); {im.get('train_sample', '?')} of its "
             f"prompts asked again. Similarity: {esc(im.get('similarity_measure', ''))}. An answer is "
             f"<b>recited</b> when its similarity is &ge; {im['threshold']:g}. A prompt is <b>in training</b> when it "
             "equals a training user turn after whitespace and case normalisation.</p>")
    parts = [intro, imitation_summary_html(im)]
    for group, name in GROUPS:
        chosen = pick_spread(sorted((e for e in im["examples"] if e["prompt_in_training"] == (group == "in_training")),
                                    key=lambda e: -e["similarity"]), per_group)
        if not chosen:
            continue
        rows = []
        for e in chosen:
            cls = " bad" if e["recited"] else ""
            if e["nearest_train_id"] is None:
                near = "<div class='meta'>no training answer shares a 3-word phrase with this answer</div>"
            else:
                near = (f"<div class='meta' style='margin-top:6px;padding:4px 6px;border-left:3px solid #9ca3af;background:#f9fafb'><span>closest training answer ({esc(e['nearest_train_id'])},"
                        f" similarity {e['similarity']:.2f})</span>\n{esc(e['nearest_train_answer'])}</div>")
            rows.append(f"<tr><td class='reply'>{esc(e['prompt'])}<div class='meta'>{esc(e['source'])}"
                        f"</div></td><td class='reply{cls}'>{esc(e['answer'])}{near}</td>"
                        f"<td class='num'>{e['similarity']:.2f}</td><td class='num'>{fmt('rate', e['phrase_reuse'])}</td></tr>")
        parts.append(f"<h3>{esc(name)}</h3><p class='meta'>{len(chosen)} of "
                     f"{im['rates'][group]['n']}, spread from the most to the least similar; red: recited.</p>"
                     "<table><tr><th>prompt</th><th>the model's answer, and under it the closest training answer</th>"
                     f"<th>similarity</th><th>phrase reuse</th></tr>{''.join(rows)}</table>")
    return "".join(parts)


def imitation_table(im: dict, title: str = "imitation") -> Table:
    table = Table(title=title, caption=f"recited: similarity >= {im['threshold']:g} ({im.get('similarity_measure', '')})")
    for col in ("prompts", "n", "recitation", "mean similarity", "phrase reuse"):
        table.add_column(col, justify="left" if col == "prompts" else "right")
    for group, name in GROUPS:
        entry = im["rates"][group]
        sim, reuse = im["mean_similarity"][group], im["phrase_reuse"][group]
        table.add_row(name, str(entry["n"]), fmt("rate", entry["rate"]) + (f"\n[dim]{fmt_interval(entry)}[/]"
                      if entry["n"] else ""), "–" if sim is None else f"{sim:.2f}", fmt("rate", reuse))
    return table
