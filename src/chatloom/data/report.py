"""The mixture report: a self-contained HTML page (pictures inline as PNG) of what each source gave and lost."""

from __future__ import annotations

from ..report_html import esc, figure_data_uri, page, table

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#111} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left} img{max-width:100%;margin:8px 0}"""


def figures(ledgers) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for lg in ledgers:
        if lg.lengths_out:
            ax.hist(lg.lengths_out, bins=40, alpha=0.55, label=lg.name)
    ax.set_xlabel("tokens per conversation (kept)")
    ax.set_ylabel("conversations")
    ax.legend()
    out["lengths"] = figure_data_uri(fig)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for lg in ledgers:
        if lg.turns_out:
            xs = sorted(lg.turns_out)
            ax.plot(xs, [lg.turns_out[x] for x in xs], marker="o", label=lg.name)
    ax.set_xlabel("messages per conversation (kept)")
    ax.set_ylabel("conversations")
    ax.legend()
    out["turns"] = figure_data_uri(fig)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    names = [lg.name for lg in ledgers]
    total_in = sum(lg.rows_in for lg in ledgers) or 1
    total_out = sum(lg.rows_out for lg in ledgers) or 1
    left_in = left_out = 0.0
    for lg in ledgers:
        a, b = lg.rows_in / total_in, lg.rows_out / total_out
        ax.barh(["before", "after"], [a, b], left=[left_in, left_out], label=lg.name)
        left_in, left_out = left_in + a, left_out + b
    ax.set_xlabel("share of rows")
    ax.legend(names, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=max(1, len(names)))
    out["shares"] = figure_data_uri(fig)
    return out


def write_report(path, ledger: dict, ledgers) -> None:
    pics = figures(ledgers)

    def listed(counts: dict) -> str:
        return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"

    sources = table(["source", "weight", "rows in", "rows out", "tokens", "supervised", "dropped", "licences"],
                    [[s["name"], s["weight"], s["rows_in"], s["rows_out"], s["tokens_out"], s["supervised_tokens_out"],
                      listed(s["dropped"]), listed(s["licenses"])] for s in ledger["sources"]])
    body = f"""
<h1>Mixture</h1><p>recipe {esc(ledger['recipe'])} · hash {esc(ledger['recipe_hash'])} · seed {ledger['seed']} ·
protocol {esc(ledger['protocol'])} · train rows {ledger['rows']['train']} · validation rows {ledger['rows']['validation']}
· rejected records {ledger['rejected_records']}</p>
{sources}
<h2>Token lengths</h2><img alt="token length histogram" src="{pics['lengths']}">
<h2>Turns</h2><img alt="turns per conversation" src="{pics['turns']}">
<h2>Source shares before and after</h2><img alt="source shares" src="{pics['shares']}">
"""
    path.write_text(page("chatloom mixture", body, css=CSS, heading=False), encoding="utf-8")
