"""The token view: tiktokenizer for conversations, in the terminal (rich) and as a self-contained HTML page.

Each token is shown as its text (whitespace made visible) with its id, coloured by the message it came from (grey:
template text that belongs to no message, message index -1: BOS, a default system prompt, the generation prompt);
supervised tokens (the ones the loss sees) are marked. Counts per conversation: tokens and supervised tokens.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable

from ..conversation import Conversation
from .base import Protocol, Rendered

PALETTE = ["#fde68a", "#bfdbfe", "#bbf7d0", "#fbcfe8", "#ddd6fe", "#fed7aa", "#a5f3fc", "#e5e7eb"]
TERMINAL_PALETTE = ["on #5c4a00", "on #1e3a5f", "on #14532d", "on #5b1a3f", "on #3b2a6b", "on #6b3410", "on #134e4a", "on #3f3f46"]


def visible(text: str) -> str:
    return text.replace("\n", "↵\n").replace("\t", "⇥").replace("\r", "␍")


def token_texts(protocol: Protocol, ids: list[int]) -> list[str]:
    return [protocol.tokenizer.token_text(i) for i in ids]


def as_json(conv: Conversation, rendered: Rendered, protocol: Protocol) -> dict:
    return {"id": conv.id, "ids": rendered.ids, "mask": rendered.mask, "tokens": token_texts(protocol, rendered.ids),
            "message_index": rendered.message_index, "num_tokens": len(rendered.ids),
            "num_supervised": rendered.num_supervised}


def to_rich(conv: Conversation, rendered: Rendered, protocol: Protocol, show_ids: bool = True):
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    text = Text()
    for tid, m, sup in zip(rendered.ids, rendered.message_index, rendered.mask, strict=True):
        style = TERMINAL_PALETTE[m % len(TERMINAL_PALETTE)] if m >= 0 else "on #262626"
        if sup:
            style += " bold underline"
        text.append(visible(protocol.tokenizer.token_text(tid)), style=style)
        text.append("\u200b")
    parts = [text]
    if show_ids:
        parts.append(Text(" ".join(str(i) for i in rendered.ids), style="dim"))
    title = (f"{conv.id} · {protocol.name}: {len(rendered.ids)} tokens, {rendered.num_supervised} supervised "
             f"(bold underline) · {len(conv.messages)} messages · grey: template")
    return Panel(Group(*parts), title=title, title_align="left")


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#111;background:#fafafa}
h1{font-size:20px} .conv{background:#fff;border:1px solid #ddd;border-radius:8px;padding:14px;margin:16px 0}
.counts{color:#444;margin:4px 0 10px} .tokens{font-family:ui-monospace,monospace;line-height:1.9;white-space:pre-wrap;word-break:break-all}
.t{border-radius:3px;padding:1px 0;margin-right:1px;box-shadow:inset 0 0 0 1px rgba(0,0,0,.08)}
.t.sup{box-shadow:inset 0 -3px 0 #16a34a;font-weight:600} .t.ctl{outline:1px dashed #555}
.ids{font-family:ui-monospace,monospace;color:#555;font-size:12px;margin-top:10px;word-break:break-all}
.legend span{display:inline-block;padding:2px 8px;border-radius:4px;margin-right:6px}
.toggle{margin:8px 0} body.hide-ids .ids{display:none}
"""


def to_html(items: Iterable[tuple[Conversation, Rendered]], protocol: Protocol, title: str = "chatloom token view") -> str:
    """A self-contained page (inline CSS, no network) with every conversation's tokens."""
    controls = set(protocol.tokenizer.special_tokens)
    blocks = []
    total_tokens = total_sup = n = 0
    for conv, r in items:
        n += 1
        total_tokens += len(r.ids)
        total_sup += r.num_supervised
        spans = []
        for tid, m, sup in zip(r.ids, r.message_index, r.mask, strict=True):
            piece = protocol.tokenizer.token_text(tid)
            color = PALETTE[m % len(PALETTE)] if m >= 0 else "#e5e5e5"
            role = conv.messages[m].role if 0 <= m < len(conv.messages) else "template"
            cls = "t" + (" sup" if sup else "") + (" ctl" if piece in controls else "")
            tip = f"id {tid} · message {m} ({role}) · {'supervised' if sup else 'not supervised'}"
            spans.append(f'<span class="{cls}" style="background:{color}" title="{html.escape(tip)}" data-id="{tid}">'
                         f"{html.escape(visible(piece))}</span>")
        legend = "".join(f'<span style="background:{PALETTE[i % len(PALETTE)]}">{i}: {html.escape(m.role)}</span>'
                         for i, m in enumerate(conv.messages))
        if any(m < 0 for m in r.message_index):
            legend += '<span style="background:#e5e5e5">template (BOS, default system, prompt)</span>'
        blocks.append(
            f'<section class="conv"><div><b>{html.escape(conv.id)}</b></div>'
            f'<div class="counts">This conversation is <b>{len(r.ids)}</b> tokens; <b>{r.num_supervised}</b> supervised '
            f"(underlined green) · {len(conv.messages)} messages</div>"
            f'<div class="legend">{legend}</div><div class="tokens">{"".join(spans)}</div>'
            f'<div class="ids">{" ".join(map(str, r.ids))}</div></section>')
    head = (f"<div>protocol <b>{html.escape(protocol.name)}</b> · tokenizer "
            f"<b>{html.escape(protocol.tokenizer.name)}</b> · {n} conversations · {total_tokens} tokens · "
            f"{total_sup} supervised</div>"
            '<label class="toggle"><input type="checkbox" onchange="document.body.classList.toggle(\'hide-ids\', !this.checked)" '
            "checked> show ids</label>")
    from ..report_html import page

    return page(title, head + "".join(blocks), css=_CSS)


def dumps_json(conv: Conversation, rendered: Rendered, protocol: Protocol) -> str:
    return json.dumps(as_json(conv, rendered, protocol), ensure_ascii=False)
