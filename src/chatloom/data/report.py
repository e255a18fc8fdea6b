"""The mixture report: a self-contained HTML page (pictures inline as PNG) of what each source gave and lost."""

from __future__ import annotations

import base64
import html
import io


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


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
    out["lengths"] = _png(fig)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for lg in ledgers:
        if lg.turns_out:
            xs = sorted(lg.turns_out)
            ax.plot(xs, [lg.turns_out[x] for x in xs], marker="o", label=lg.name)
    ax.set_xlabel("messages per conversation (kept)")
    ax.set_ylabel("conversations")
    ax.legend()
    out["turns"] = _png(fig)
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
    out["shares"] = _png(fig)
    return out


def write_report(path, ledger: dict, ledgers) -> None:
    pics = figures(ledgers)
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(str(s['weight']))}</td><td>{s['rows_in']}</td>"
        f"<td>{s['rows_out']}</td><td>{s['tokens_out']}</td><td>{s['supervised_tokens_out']}</td>"
        f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in s['dropped'].items()) or '-')}</td>"
        f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in s['licenses'].items()) or '-')}</td></tr>"
        for s in ledger["sources"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>chatloom mixture</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#111}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} img{{max-width:100%;margin:8px 0}}</style></head><body>
<h1>Mixture</h1><p>recipe {html.escape(ledger['recipe'])} · hash {ledger['recipe_hash']} · seed {ledger['seed']} ·
protocol {html.escape(ledger['protocol'])} · train rows {ledger['rows']['train']} · validation rows {ledger['rows']['validation']}
· rejected records {ledger['rejected_records']}</p>
<table><tr><th>source</th><th>weight</th><th>rows in</th><th>rows out</th><th>tokens</th><th>supervised</th><th>dropped</th><th>licences</th></tr>{rows}</table>
<h2>Token lengths</h2><img alt="token length histogram" src="{pics['lengths']}">
<h2>Turns</h2><img alt="turns per conversation" src="{pics['turns']}">
<h2>Source shares before and after</h2><img alt="source shares" src="{pics['shares']}">
</body></html>"""
    path.write_text(page, encoding="utf-8")
