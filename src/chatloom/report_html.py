"""Self-contained HTML pages for chatloom's reports: the page shell, escaped tables and pictures inlined as PNG data URIs.

The mixture report (`data/report.py`), the evaluation report (`evals/report.py`), the quickstart's `report.html`
(`quickstart/report.py`) and the token view (`protocols/view.py`) all build their pages from these pieces, so they
escape text the same way and open in a browser without a network (no external CSS, scripts or images).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The reports' shared look (evaluation and quickstart pages).
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111;max-width:1200px}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f4f6}.num{text-align:right;font-variant-numeric:tabular-nums}.ok{background:#dcfce7}.bad{background:#fee2e2}
.reply{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;max-width:380px}
.meta{color:#6b7280;font-size:12px}
"""


class Html(str):
    """Markup that is already HTML (a link, a picture): `table` and `cell` insert it as it is, plain text is escaped."""


class Cell(Html):
    """A built table cell (`cell(...)`): `table` puts it in the row as it is."""


def esc(value) -> str:
    """Any value as HTML text (quotes escaped too, so the result is safe inside attributes)."""
    return html.escape(str(value))


def page(title: str, body: str, *, css: str = CSS, heading: bool = True) -> str:
    """A whole document: `<title>` (and, with `heading`, an `<h1>`) from `title`, the inline `css`, then `body`."""
    h1 = f"<h1>{esc(title)}</h1>" if heading else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{css}</style>"
            f"</head><body>{h1}{body}</body></html>")


def cell(content, cls: str = "", *, tag: str = "td") -> Cell:
    """One table cell; `content` is escaped unless it is `Html`."""
    attr = f" class='{cls}'" if cls else ""
    inner = content if isinstance(content, Html) else esc(content)
    return Cell(f"<{tag}{attr}>{inner}</{tag}>")


def table(head: Sequence | None, rows: Iterable[Sequence]) -> Html:
    """A table: a header row of `head` titles (None: no header), then one row per item of `rows`, each a sequence of
    cells (text is escaped into `<td>`, a `cell(...)` keeps its class)."""
    def row(cells, tag="td") -> str:
        return "<tr>" + "".join(c if isinstance(c, Cell) else cell(c, tag=tag) for c in cells) + "</tr>"
    header = row(head, "th") if head is not None else ""
    return Html(f"<table>{header}{''.join(row(r) for r in rows)}</table>")


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def figure_data_uri(fig, dpi: int = 110) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return png_data_uri(buf.getvalue())


def png_file_img(path: Path, alt: str, style: str = "") -> Html:
    """A PNG file inlined as `<img>`, or a note saying it is missing (a report still renders without it)."""
    if not path.is_file():
        return Html(f"<p class='meta'>(no picture at {esc(path)})</p>")
    style_attr = f" style='{esc(style)}'" if style else ""
    return Html(f"<img alt='{esc(alt)}' src='{png_data_uri(path.read_bytes())}'{style_attr}>")
