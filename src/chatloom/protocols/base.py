"""What every protocol is: conversation -> parts (text or control token) -> ids, loss mask and message index.

A protocol only has to say which *parts* a conversation becomes (`parts`) and how to read ids back (`parse`). Turning parts
into ids is shared and exact: consecutive text parts are joined into one segment and encoded as a whole with special-token
parsing off, and control tokens are placed by id. This is what a Hugging Face tokenizer does with a rendered template
(it splits on control tokens and encodes the text between them), minus the injection: user text is never searched for
control tokens.

The supervision rule, one for every path: **a token is supervised iff it contains a byte of a supervised character**
(a character of a trained assistant reply as the template renders it), and the end-of-turn token that closes such a
reply is supervised. So a token that straddles a header and a reply (BPE merging the header's newline with a reply
that starts with whitespace) is supervised, as are all the byte tokens of a reply's last character. Token spans come
from the token bytes (see spans.py), not from character start offsets, which cannot see a token that ends inside a
character.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..conversation import Conversation
from ..tokenizers import Tokenizer, safe_split
from .spans import token_spans

NO_MESSAGE = -1


@dataclass(slots=True)
class Part:
    """A piece of the rendered conversation: either `text` or a control `token`, from message `message` (-1: none)."""

    text: str | None = None
    token: str | None = None
    message: int = NO_MESSAGE
    supervised: bool = False


@dataclass
class Rendered:
    """Token ids, 0/1 loss mask and, per token, the index of the message it came from (-1 for BOS / prompt)."""

    ids: list[int]
    mask: list[int]
    message_index: list[int]
    parts: list[Part] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_supervised(self) -> int:
        return sum(self.mask)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(start, end) token range of each message, in message order."""
        out: dict[int, list[int]] = {}
        for t, m in enumerate(self.message_index):
            if m >= 0:
                out.setdefault(m, [t, t + 1])[1] = t + 1
        return [tuple(out[m]) for m in sorted(out)]


class ProtocolError(ValueError):
    """Ids that do not follow the protocol, or a protocol that cannot be used with a tokenizer."""


class Protocol:
    """Base class: subclasses define `parts`, `parse`, the control tokens and the end-of-turn token."""

    name: str = ""
    control_tokens: tuple[str, ...] = ()
    end_of_turn: str = ""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._short_text_ids: dict[str, list[int]] = {}  # headers like "assistant\n": encoded once
        added = tokenizer.add_special_tokens([t for t in self.control_tokens if t])
        self.added_tokens = added
        self._ids = {t: tokenizer.token_id(t) for t in self.control_tokens if t}
        missing = [t for t, i in self._ids.items() if i is None]
        if missing:
            raise ProtocolError(f"{self.name}: tokenizer {tokenizer.name} has no ids for control tokens {missing}")
        clash = {}
        for t, i in self._ids.items():
            if i in clash and clash[i] != t:
                raise ProtocolError(f"{self.name}: control tokens {clash[i]!r} and {t!r} share id {i}")
            clash[i] = t

    # --------------------------------------------------------------------------------------------- to be defined
    def parts(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Part]:
        raise NotImplementedError

    def parse(self, ids: Sequence[int]) -> Conversation:
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------- shared
    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.token_id(self.end_of_turn)

    @property
    def stop_ids(self) -> list[int]:
        """Ids at which generation stops: the end-of-turn token (and EOS when it differs)."""
        ids = [self.end_of_turn_id]
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos not in ids:
            ids.append(eos)
        return ids

    def render(self, conv: Conversation) -> Rendered:
        return self.render_batch([conv])[0]

    def render_batch(self, convs: Sequence[Conversation], add_generation_prompt: bool = False) -> list[Rendered]:
        """Render many conversations at once: all text goes to the tokenizer in one batch. Regular conversations take
        the gap fast path (see gaps.py); the others, and any the fast path cannot do exactly, take the general one."""
        result: list[Rendered | None] = [None] * len(convs)
        renderer = self.gap_renderer()
        if renderer is not None:
            index, items = [], []
            for i, c in enumerate(convs):
                item = self.gap_item(c, add_generation_prompt)
                if item is not None:
                    index.append(i)
                    items.append(item)
            for i, r in zip(index, renderer.render(items), strict=True):
                result[i] = r
        rest = [i for i, r in enumerate(result) if r is None]
        if rest:
            slow = self.encode_parts([self.parts(convs[i], add_generation_prompt) for i in rest])
            for i, r in zip(rest, slow, strict=True):
                result[i] = r
        return result

    def prompt(self, conv: Conversation) -> list[int]:
        """The conversation so far plus the assistant header: the context the engine samples from."""
        return self.render_batch([conv], add_generation_prompt=True)[0].ids

    def gap_renderer(self):
        """The fast-path renderer, for protocols whose conversations are contents between fixed strings."""
        return None

    def gap_item(self, conv: Conversation, add_generation_prompt: bool):
        """(gap strings, contents, supervised flags) of a conversation for the fast path, or None."""
        return None

    def text(self, conv: Conversation, add_generation_prompt: bool = False) -> str:
        """The rendered conversation as one string (what a chat template would produce)."""
        return "".join(p.text if p.text is not None else p.token for p in self.parts(conv, add_generation_prompt))

    def encode_parts(self, batch: Sequence[list[Part]]) -> list[Rendered]:
        """Parts -> ids, mask, message index for a batch of conversations, with one tokenizer call for all the text."""
        tok = self.tokenizer
        can_split = tok.splits_after_newline
        cache = self._short_text_ids
        plans: list[list] = []
        pending: dict[str, None] = {}  # texts to encode whole (no offsets needed)
        multi: list[str] = []  # segments whose part boundaries need character offsets
        for parts in batch:
            plan, run = [], []
            for p in [*parts, None]:
                if p is not None and p.token is None:
                    if p.text:
                        run.append(p)
                    continue
                if run:  # close the text segment: split it where the boundary is provably safe
                    group = [run[0]]
                    for q in run[1:]:
                        if can_split and safe_split(group[-1].text, q.text):
                            plan.append(group)
                            group = [q]
                        else:
                            group.append(q)
                    plan.append(group)
                    run = []
                if p is not None:
                    plan.append(p)
            for item in plan:
                if isinstance(item, list):
                    if len(item) == 1:
                        if item[0].text not in cache:
                            pending[item[0].text] = None
                    else:
                        multi.append("".join(q.text for q in item))
            plans.append(plan)
        whole = dict(cache)
        if pending:
            texts = list(pending)
            for t, ids in zip(texts, tok.encode_batch(texts), strict=True):
                whole[t] = ids
                if len(t) <= 32 and len(cache) < 4096:
                    cache[t] = ids
        with_starts = iter(tok.encode_with_starts(multi)) if multi else iter(())
        ids_of = self._ids
        out = []
        for plan, parts in zip(plans, batch, strict=True):
            ids: list[int] = []
            mask: list[int] = []
            msg: list[int] = []
            for item in plan:
                if isinstance(item, Part):
                    tid = ids_of.get(item.token)
                    ids.append(tid if tid is not None else self._control_id(item.token))
                    mask.append(1 if item.supervised else 0)
                    msg.append(item.message)
                elif len(item) == 1:
                    p = item[0]
                    seg = whole[p.text]
                    ids.extend(seg)
                    mask.extend([1 if p.supervised else 0] * len(seg))
                    msg.extend([p.message] * len(seg))
                else:
                    seg_ids, starts = next(with_starts)
                    spans = token_spans(tok, "".join(q.text for q in item), seg_ids, starts)
                    firsts = [a for a, _ in spans]
                    ends = [b for _, b in spans]
                    seg_mask = [0] * len(seg_ids)
                    seg_msg = [NO_MESSAGE] * len(seg_ids)
                    pos = 0
                    for p in item:  # a token belongs to the part its first character is in ...
                        end = pos + len(p.text)
                        a, b = bisect_left(firsts, pos), bisect_left(firsts, end)
                        seg_msg[a:b] = [p.message] * (b - a)
                        if p.supervised:  # ... and a supervised part claims every token that overlaps it
                            a, b = bisect_right(ends, pos), bisect_left(firsts, end)
                            seg_mask[a:b] = [1] * (b - a)
                        pos = end
                    ids.extend(seg_ids)
                    mask.extend(seg_mask)
                    msg.extend(seg_msg)
            out.append(Rendered(ids, mask, msg, parts))
        return out

    def _control_id(self, token: str) -> int:
        tid = self.tokenizer.token_id(token)
        if tid is None:
            raise ProtocolError(f"{self.name}: {token!r} is not a control token of tokenizer {self.tokenizer.name}")
        self._ids[token] = tid
        return tid

    # --------------------------------------------------------------------------------------------- parsing helpers
    def split_control(self, ids: Sequence[int]) -> list[tuple[str, str]]:
        """Ids -> [("token", "<|im_start|>"), ("text", "user\\n..."), ...]: control tokens apart, text decoded."""
        by_id = {i: t for t, i in self.tokenizer.special_tokens.items()}
        out: list[tuple[str, str]] = []
        run: list[int] = []
        for i in ids:
            if i in by_id:
                if run:
                    out.append(("text", self.tokenizer.decode(run)))
                    run = []
                out.append(("token", by_id[i]))
            else:
                if not 0 <= i < len(self.tokenizer):
                    raise ProtocolError(f"{self.name}: id {i} is outside the vocabulary")
                run.append(i)
        if run:
            out.append(("text", self.tokenizer.decode(run)))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "control_tokens": {t: self.tokenizer.token_id(t) for t in self.control_tokens if t},
                "end_of_turn": self.end_of_turn, "added_tokens": list(self.added_tokens)}
