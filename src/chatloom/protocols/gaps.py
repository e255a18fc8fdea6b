"""The fast path for regular formats: a conversation is `gap0 content0 gap1 content1 ... gapN`.

Built-in formats and most chat templates (their "skeleton") put a fixed string between two message contents that
depends only on the roles around it. Each such gap is split once into: `lead` (text before its first control token,
which joins the previous content), a pre-encoded middle (control tokens and the text between them, with which part
closes the previous message and which is supervised through the end-of-turn token) and `trail` (text after its last
control token, which opens the next content, e.g. "assistant\\n"). Rendering is then one tokenizer call per content
plus list concatenation, with no intermediate objects.

It is exact only when encoding `trail + content + lead` apart equals encoding it whole: when lead is empty and the
trail/content boundary is one the tokenizer never merges across (`safe_split`). Conversations that do not qualify
return None and take the general path; property tests check both paths give the same ids and masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..tokenizers import safe_split
from .base import NO_MESSAGE, Protocol, Rendered


@dataclass
class CompiledGap:
    lead: str
    trail: str
    ids: list[int]
    closes: list[bool]  # token belongs to the message before (else to the one after)
    in_turn: list[bool]  # token is at or before the end-of-turn token (supervised after a trained assistant turn)
    usable: bool
    trail_closes: bool  # the trail is the end of the message before (the gap opens nothing), e.g. "\n" after <|im_end|>

    def __post_init__(self):
        self.turn_mask = [1 if t else 0 for t in self.in_turn]
        self.zeros = [0] * len(self.ids)
        self.n_closing = sum(self.closes)  # closing tokens come first


class GapRenderer:
    """Renders conversations given their gap strings, for one protocol."""

    def __init__(self, protocol: Protocol, splitter, end_of_turn: str):
        self.protocol = protocol
        self.splitter = splitter
        self.end_of_turn = end_of_turn
        self._compiled: dict[str, CompiledGap] = {}

    def compile(self, gap: str) -> CompiledGap:
        c = self._compiled.get(gap)
        if c is not None:
            return c
        pieces = [(k, v) for k, v, _ in self.splitter.split(gap)]
        controls = [i for i, (k, _) in enumerate(pieces) if k == "token"]
        if not controls:
            c = CompiledGap(gap, "", [], [], [], usable=False, trail_closes=False)
        else:
            first, last = controls[0], controls[-1]
            opens = controls[1] if len(controls) > 1 else len(pieces)  # from here on the gap opens the next message
            eot = next((i for i in controls if pieces[i][1] == self.end_of_turn), -1)
            lead = "".join(v for _, v in pieces[:first])
            trail = "".join(v for _, v in pieces[last + 1:])
            tok = self.protocol.tokenizer
            ids, closes, in_turn = [], [], []
            for i in range(first, last + 1):
                kind, value = pieces[i]
                piece_ids = [self.protocol._control_id(value)] if kind == "token" else tok.encode(value)
                ids += piece_ids
                closes += [i < opens] * len(piece_ids)
                in_turn += [i <= eot] * len(piece_ids)
            c = CompiledGap(lead, trail, ids, closes, in_turn, usable=True, trail_closes=len(controls) == 1)
        self._compiled[gap] = c
        return c

    def render(self, items: Sequence[tuple[list[str], list[str], list[bool]]]) -> list[Rendered | None]:
        """items: per conversation (gaps (n+1), contents (n), supervised flags (n)). None where not exact."""
        tok = self.protocol.tokenizer
        can_split = tok.splits_after_newline
        plans, texts = [], {}
        for gaps, contents, _ in items:
            compiled = [self.compile(g) for g in gaps]
            ok = all(c.usable and not c.lead for c in compiled[1:]) and compiled[0].usable and not compiled[0].lead
            if ok:
                for j, content in enumerate(contents):
                    trail = compiled[j].trail
                    if trail and not (content and can_split and safe_split(trail, content)):
                        ok = False
                        break
            if not ok:
                plans.append(None)
                continue
            for j, content in enumerate(contents):
                texts[content] = None
                if compiled[j].trail:
                    texts[compiled[j].trail] = None
            if compiled[-1].trail:
                texts[compiled[-1].trail] = None
            plans.append(compiled)
        unique = [t for t in texts if t]
        encoded = dict(zip(unique, tok.encode_batch(unique), strict=True))
        encoded[""] = []
        out: list[Rendered | None] = []
        for plan, (_, contents, supervised) in zip(plans, items, strict=True):
            if plan is None:
                out.append(None)
                continue
            ids: list[int] = []
            mask: list[int] = []
            msg: list[int] = []
            n = len(contents)
            for j in range(n + 1):
                gap = plan[j]
                before, after = j - 1, (j if j < n else NO_MESSAGE)
                sup = supervised[before] if before >= 0 else False
                ids += gap.ids
                mask += gap.turn_mask if sup else gap.zeros
                if before >= 0:
                    msg += [before] * gap.n_closing + [after] * (len(gap.ids) - gap.n_closing)
                else:
                    msg += [after] * len(gap.ids)
                if gap.trail:
                    t_ids = encoded[gap.trail]
                    ids += t_ids
                    mask += [0] * len(t_ids)
                    msg += [before if gap.trail_closes and before >= 0 else after] * len(t_ids)
                if j < n:
                    c_ids = encoded[contents[j]]
                    ids += c_ids
                    mask += [1 if supervised[j] else 0] * len(c_ids)
                    msg += [j] * len(c_ids)
            out.append(Rendered(ids, mask, msg))
        return out
