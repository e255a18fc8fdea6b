"""The one encoder: a conversation laid out as template text and message contents -> ids, loss mask, message index.

Every protocol (the built-in formats, a chat template through its learned skeleton, a chat template rendered by Jinja)
describes a conversation the same way, as a `Layout`: `gap0 content0 gap1 content1 ... gapN`, where each gap is the
template text between two message contents (control tokens included, as their strings) and each content is a message's
text as the template renders it (after any `trim`). From there one set of rules decides everything:

**Ids.** Control-token strings in gaps become their ids; message contents never do (a user who types `<|im_end|>` gets
text). The text between two control tokens is encoded as a whole with special-token parsing off, so ids equal the
tokenizer's encoding of the rendered text split at the control tokens (what `apply_chat_template` gives for text without
injected control strings). A run of text is cut into separately encoded pieces only where the tokenizer provably never
merges across the cut (`safe_split`).

**Which message a piece of template text belongs to.** A gap first closes the message before it: through its first
end-of-turn token and the whitespace right after it (`<|im_end|>\\n`); the rest opens the message after it (`<|im_start|>
user\\n`). Text in a gap without an end-of-turn token opens the next message. The first gap has no message before it:
what it closes (a template's default system turn) and a leading BOS token belong to no message (index -1), as does
what the last gap opens (the generation prompt).

**Reasoning.** An assistant message with `reasoning_content` is several contents of the same message in the layout: an
empty one where the generation prompt ends, its reasoning, then its reply. The gaps between contents of one message
(the template's `<think>\\n` and `\\n</think>\\n\\n`) are *framed*: what the model writes after the generation
prompt, so they belong to that message and are supervised when it is (a trained model learns to open and to close its
reasoning block). The reasoning content has its own supervised flag (`Protocol.train_reasoning`): off, the reasoning
text is not supervised but its frame still is.

**Which tokens are supervised.** A token is supervised iff it contains a byte of a supervised character: the content
(and reasoning, unless turned off) of an assistant message with `train` true, plus, for one that carries tool calls, the template text between its content
and the end-of-turn token (where templates render the calls), plus the framed gaps of a trained assistant message
(its reasoning block's tags and separators). The end-of-turn token that closes a trained assistant message is
supervised. Nothing else: not headers, not template whitespace, not BOS. A token in a run of text belongs to
the message of its first character, unless it is supervised: then to the supervised message.

Gap compilation (splitting a gap into lead text, pre-encoded control tokens and the text between them, and trail text,
with the ownership above) is a cache inside the encoder: a template has few distinct gaps.
"""

from __future__ import annotations

import gc
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from ..tokenizers import Tokenizer, safe_split
from .base import NO_MESSAGE, Part, ProtocolError, Rendered
from .escape import Escaper
from .spans import byte_ends, token_spans

SHORT_TEXT = 32  # texts up to this many characters (headers like "assistant\n") are encoded once and kept
MAX_CACHED = 1 << 16


@dataclass(slots=True)
class Layout:
    """One conversation: `gaps` (len n+1, template text that may hold control-token strings; text the template took
    from messages is escaped with the protocol's escaper), `contents` (len n, plain text), and per message whether its
    content is supervised (`trained`) and whether the closing template text up to its end-of-turn token is too
    (`extends`: assistant messages with tool calls)."""

    gaps: list[str]
    contents: list[str]
    trained: list[bool]
    extends: list[bool] | None = None
    owners: list[int] | None = None  # message index of each content (default: content j is message j); an
    # assistant message with reasoning has several contents (see the module doc), with framed gaps between them
    framed: list[bool] | None = None  # per gap: template text the model writes inside a trained assistant turn
    # (between two of its contents: the reasoning block's tags), supervised as a whole

    def owner(self, j: int) -> int:
        return self.owners[j] if self.owners is not None else j


_NO, _EOT, _EXT = 0, 1, 2  # supervision codes of gap pieces: never, the end-of-turn token, closing text of a tool-call turn
_TEXT, _GAP, _MULTI = "text", "gap", "multi"  # kinds of plan items (compared by identity)


class CompiledGap:
    """A gap split once: `lead` text (before its first control token), `ids` (the control tokens and the text between
    them, pre-encoded) and `trail` text (after its last control token), with which part closes the message before."""

    __slots__ = ("pieces", "lead", "lead_closes", "lead_ext", "ids", "n_close", "n_open", "mask_eot", "mask_ext", "zeros",
                 "ones",
                 "trail", "trail_closes", "has_controls")

    def __init__(self, pieces: list[tuple[str, str, bool, int]], ids: list[int], codes: list[int], closes: list[bool]):
        self.pieces = pieces  # (kind, value, closes, supervision code), text unescaped
        self.has_controls = any(k == "token" for k, *_ in pieces)
        first, last = (pieces[0], pieces[-1]) if pieces else (None, None)
        self.lead = first[1] if first is not None and first[0] == "text" else ""
        self.lead_closes = bool(self.lead) and first[2]
        self.lead_ext = bool(self.lead) and first[3] == _EXT
        if self.has_controls and last[0] == "text":
            self.trail, self.trail_closes = last[1], last[2]
        else:
            self.trail, self.trail_closes = "", False
        self.ids = ids
        self.n_close = sum(closes)  # closing tokens come first
        self.n_open = len(ids) - self.n_close
        self.mask_eot = bytes(1 if c == _EOT else 0 for c in codes)  # loss masks as bytes, joined per rendering
        self.mask_ext = bytes(1 if c != _NO else 0 for c in codes)
        self.zeros = bytes(len(ids))
        self.ones = b"\x01" * len(ids)


def _runs(values: list[int]) -> list[int]:
    """Run-length form of a message index: [5, 5, 5, 7] -> [5, 3, 7, 1] (what `Rendered(runs=...)` takes)."""
    out: list[int] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            out += (values[start], i - start)
            start = i
    return out


class Encoder:
    """Layouts -> Rendered for one tokenizer, escaper and end-of-turn token. `bos` are tokens that, leading the first
    gap, start the document rather than a message."""

    def __init__(self, tokenizer: Tokenizer, escaper: Escaper, end_of_turn: str, bos: Sequence[str] = (), name: str = ""):
        self.tokenizer = tokenizer
        self.escaper = escaper
        self.end_of_turn = end_of_turn
        self.bos = frozenset(t for t in bos if t)
        self.name = name
        self._gaps: dict[tuple[str, bool, bool], CompiledGap] = {}
        self._short: dict[str, list[int]] = {}
        self._control_ids: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------------ gaps
    def control_id(self, token: str) -> int:
        tid = self._control_ids.get(token)
        if tid is None:
            tid = self.tokenizer.token_id(token)
            if tid is None:
                raise ProtocolError(f"{self.name}: {token!r} is not a control token of tokenizer {self.tokenizer.name}")
            self._control_ids[token] = tid
        return tid

    def compile(self, gap: str, first: bool, last: bool) -> CompiledGap:
        key = (gap, first, last)
        c = self._gaps.get(key)
        if c is not None:
            return c
        unescape = self.escaper.unescape
        raw = [(k, v if k == "token" else unescape(v)) for k, v, _ in self.escaper.split(gap)]
        eots = [i for i, (k, v) in enumerate(raw) if k == "token" and v == self.end_of_turn]
        close_end, eot = 0, -1
        if eots:
            eot = eots[-1] if first else eots[0]  # the first gap closes the template's own turns (default system)
            close_end = eot + 1
            if close_end < len(raw) and raw[close_end][0] == "text" and not raw[close_end][1].strip():
                close_end += 1
        if first:
            while close_end < len(raw) and raw[close_end][0] == "token" and raw[close_end][1] in self.bos:
                close_end += 1
        pieces = []
        for i, (k, v) in enumerate(raw):
            code = _NO if first or i > eot else (_EOT if i == eot else _EXT)
            pieces.append((k, v, i < close_end, code))
        controls = [i for i, p in enumerate(pieces) if p[0] == "token"]
        ids, codes, closes = [], [], []
        if controls:
            tok = self.tokenizer
            for k, v, cl, code in pieces[controls[0]: controls[-1] + 1]:
                piece_ids = [self.control_id(v)] if k == "token" else tok.encode(v)
                ids += piece_ids
                codes += [code] * len(piece_ids)
                closes += [cl] * len(piece_ids)
        c = CompiledGap(pieces, ids, codes, closes)
        if len(self._gaps) < MAX_CACHED:
            self._gaps[key] = c
        return c

    # ------------------------------------------------------------------------------------------------ parts / text
    def parts(self, layout: Layout) -> list[Part]:
        """The layout as parts (text or control token, message, supervised): what `encode` turns into tokens."""
        n = len(layout.contents)
        ext = layout.extends or [False] * n
        framed = layout.framed or [False] * (n + 1)
        out: list[Part] = []
        for j in range(n + 1):
            g = self.compile(layout.gaps[j], j == 0, j == n)
            before, after = j - 1, (j if j < n else NO_MESSAGE)
            trained = before >= 0 and layout.trained[before]
            m_before = layout.owner(before) if before >= 0 else NO_MESSAGE
            m_after = layout.owner(after) if after >= 0 else NO_MESSAGE
            for kind, value, closes, code in g.pieces:
                sup = framed[j] or (trained and (code == _EOT or (code == _EXT and ext[before])))
                owner = m_before if closes else m_after
                out.append(Part(token=value, message=owner, supervised=sup) if kind == "token"
                           else Part(text=value, message=owner, supervised=sup))
            if j < n:
                out.append(Part(text=layout.contents[j], message=layout.owner(j), supervised=layout.trained[j]))
        return out

    def text(self, layout: Layout) -> str:
        unescape = self.escaper.unescape
        out = [unescape(layout.gaps[0])]
        for content, gap in zip(layout.contents, layout.gaps[1:], strict=True):
            out.append(content)
            out.append(unescape(gap))
        return "".join(out)

    # ------------------------------------------------------------------------------------------------ encode
    def encode(self, layouts: Sequence[Layout], workers: int = 1) -> list[Rendered]:
        """Ids, mask and message index of each layout. All the text of the batch goes to the tokenizer in one call
        (each distinct text once), spread over `workers` threads when the tokenizer can use them.

        The cyclic garbage collector is paused meanwhile: encoding allocates many small acyclic containers, and each
        collection they trigger would walk every id of the lists already built (a fifth of the time on long texts)."""
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._encode(layouts, workers)
        finally:
            if paused:
                gc.enable()

    def _encode(self, layouts: Sequence[Layout], workers: int) -> list[Rendered]:
        tok = self.tokenizer
        can_split = tok.splits_after_newline
        short = self._short
        cache = self._gaps
        compile_ = self.compile
        plan_run = self._plan_run
        plans: list[list] = []
        whole: dict[str, list[int] | None] = {}  # texts encoded as a whole (one message / one owner)
        multi: list[str] = []  # runs whose pieces belong to different owners: need token boundaries
        for layout in layouts:
            contents = layout.contents
            gaps = layout.gaps
            n = len(contents)
            trained = layout.trained
            ext = layout.extends
            own = layout.owners
            framed = layout.framed
            plan: list = []
            run: list[tuple[str, int, bool]] = []
            m_before = t_before = e_before = None
            for j in range(n + 1):
                first, last = j == 0, j == n
                gap = gaps[j]
                g = cache.get((gap, first, last)) or compile_(gap, first, last)
                if first:
                    m_before, t_before, e_before = NO_MESSAGE, False, False
                else:
                    m_before = own[j - 1] if own is not None else j - 1
                    t_before = trained[j - 1]
                    e_before = t_before and ext is not None and ext[j - 1]
                m_after = NO_MESSAGE if last else (own[j] if own is not None else j)
                f = framed is not None and framed[j]  # the reasoning block's tags: supervised, of that message
                if g.lead:
                    run.append((g.lead, m_before if g.lead_closes else m_after, f or (e_before and g.lead_ext)))
                if g.has_controls:
                    if len(run) == 1:  # the common case: one content between two control tokens
                        text, message, sup = run[0]
                        if text:
                            if text not in whole:
                                whole[text] = short.get(text)
                            plan.append((_TEXT, text, message, sup))
                        run = []
                    elif run:
                        plan_run(run, plan, whole, multi, can_split, short)
                        run = []
                    mask = g.ones if f else (g.mask_ext if e_before else g.mask_eot) if t_before else g.zeros
                    plan.append((_GAP, g, m_before, m_after, mask))
                    if g.trail:
                        run.append((g.trail, m_before if g.trail_closes else m_after, f))
                if not last:
                    run.append((contents[j], m_after, trained[j]))
            if run:
                plan_run(run, plan, whole, multi, can_split, short)
            plans.append(plan)
        todo = [t for t, v in whole.items() if v is None]
        spans_of = iter(())
        if todo or multi:
            texts = todo + multi
            encoded = tok.encode_batch(texts, workers) if workers > 1 else tok.encode_batch(texts)
            for t, ids in zip(todo, encoded, strict=False):
                whole[t] = ids
                if len(t) <= SHORT_TEXT and len(short) < MAX_CACHED:
                    short[t] = ids
            spans_of = iter(self._bounds(multi, encoded[len(todo):]))
        out = []
        join = b"".join
        for plan in plans:
            ids: list[int] = []
            mask: list[bytes] = []
            runs: list[int] = []  # message index as (message, count) runs
            for item in plan:
                tag = item[0]
                if tag is _TEXT:  # one text, one owner
                    seg = whole[item[1]]
                    k = len(seg)
                    ids += seg
                    mask.append(b"\x01" * k if item[3] else bytes(k))
                    runs += (item[2], k)
                elif tag is _GAP:  # a gap's control tokens (and the text between them)
                    g = item[1]
                    ids += g.ids
                    mask.append(item[4])
                    runs += (item[2], g.n_close, item[3], g.n_open)
                else:  # pieces of several owners encoded together
                    seg_ids, seg_mask, seg_msg = self._assign(item[1], next(spans_of))
                    ids += seg_ids
                    mask.append(bytes(seg_mask))
                    runs += _runs(seg_msg)
            out.append(Rendered(ids, join(mask), runs=runs))
        return out

    def _plan_run(self, run, plan, whole, multi, can_split, short):
        """A run of text between control tokens -> plan items: (_TEXT, text, message, supervised) where one owner has
        it, else (_MULTI, pieces) encoded together (a run is cut where the tokenizer never merges across)."""
        merged = []
        for piece in run:
            if not piece[0]:
                continue
            if merged and merged[-1][1] == piece[1] and merged[-1][2] == piece[2]:
                merged[-1] = (merged[-1][0] + piece[0], piece[1], piece[2])
            else:
                merged.append(piece)
        if not merged:
            return
        groups = [[merged[0]]]
        for piece in merged[1:]:
            if can_split and safe_split(groups[-1][-1][0], piece[0]):
                groups.append([piece])
            else:
                groups[-1].append(piece)
        for group in groups:
            if len(group) == 1:
                text, message, sup = group[0]
                if text not in whole:
                    whole[text] = short.get(text)
                plan.append((_TEXT, text, message, sup))
            else:
                multi.append("".join(p[0] for p in group))
                plan.append((_MULTI, group))

    def _bounds(self, texts: list[str], encoded: list[list[int]]) -> list[tuple[list[int], bool, list[int], list[int]]]:
        """For each multi-owner text: (ids, in_bytes, token starts, token ends), in bytes for tokenizers whose tokens
        spell the text byte for byte (from a table of token byte lengths), else in characters (spans.py)."""
        tok = self.tokenizer
        lengths = tok.byte_lengths() if texts else None
        out = []
        for text, ids in zip(texts, encoded, strict=True):
            if lengths is not None:
                ends = byte_ends(lengths, ids)
                if ends is not None and (ends[-1] if ends else 0) == len(text.encode("utf-8")):
                    out.append((ids, True, [0, *ends[:-1]], ends))
                    continue
            try:
                spans = token_spans(tok, text, ids)
            except ValueError:  # tokens do not spell the text byte for byte: the tokenizer's own offsets
                ids, starts = tok.encode_with_starts([text])[0]
                spans = token_spans(tok, text, ids, starts)
            out.append((ids, False, [a for a, _ in spans], [b for _, b in spans]))
        return out

    @staticmethod
    def _assign(group, bounds) -> tuple[list[int], list[int], list[int]]:
        """The rule for a run of pieces of several owners: a token belongs to the piece its first character is in; a
        token that contains a character of a supervised piece is supervised and belongs to that piece's message.
        (In bytes: pieces end on character boundaries, so a token holds a byte of a piece iff it holds a character.)"""
        ids, in_bytes, firsts, ends = bounds
        mask = [0] * len(ids)
        msg = [NO_MESSAGE] * len(ids)
        pos = 0
        supervised = []
        for text, message, sup in group:
            end = pos + (len(text.encode("utf-8")) if in_bytes and not text.isascii() else len(text))
            a, b = bisect_left(firsts, pos), bisect_left(firsts, end)
            msg[a:b] = [message] * (b - a)
            if sup:
                supervised.append((pos, end, message))
            pos = end
        for pos, end, message in supervised:
            a, b = bisect_right(ends, pos), bisect_left(firsts, end)
            mask[a:b] = [1] * (b - a)
            msg[a:b] = [message] * (b - a)
        return ids, mask, msg
