"""The fast path of chat templates: the template as fixed strings between message contents (its "skeleton").

Most templates put a fixed string between two message contents that depends only on the roles around it (and on
whether the first message is involved, and on `add_generation_prompt` at the ends). Probing learns those strings by
rendering conversations of several shapes with marker contents; the skeleton is kept only when it then reproduces
the template exactly on other contents (whitespace, newlines, think tags) and shapes, either with the content as is or
trimmed (`content | trim`). A conversation the skeleton covers is laid out without running Jinja, and the skeleton is
also how `parse` reads ids back into messages.

It uses the protocol's public `render_escaped` (Jinja rendering with control strings in messages escaped) and
`escaper` only.
"""

from __future__ import annotations

from ..conversation import Conversation, Message
from .base import ProtocolError
from .encoder import Layout
from .jinja_env import TemplateError

END = "$end"


class Skeleton:
    """The template as fixed strings between message contents, keyed by the roles around them (see module doc)."""

    ROLES = ("system", "user", "assistant")
    PROBE_TEXTS = ("P", " spaced out \n", "\nnew\nlines\n\n", "<think>x</think> y", "  ", "tab\there")

    def __init__(self, proto, trim: bool = False, think: tuple[str, str] | None = None, reader: bool = False):
        self.proto = proto
        self.trim = trim  # the template strips message content (`content | trim`), e.g. Llama 3
        self.reader = reader  # for reading only (parse), never for rendering
        self.think = think  # a reader's reasoning tags: an empty block before assistant content is read as content
        self.first: dict[tuple, str] = {}  # (first role, second role or END, gen) -> text before the first content
        self.gap: dict[tuple, str] = {}  # (prev role, next role, prev is first) -> text between contents
        self.last: dict[tuple, str] = {}  # (last role, is first, gen) -> text after the last content

    @classmethod
    def learn(cls, proto) -> Skeleton | None:
        return cls._learn(proto, trim=False) or cls._learn(proto, trim=True)

    @classmethod
    def learn_reader(cls, proto, think: tuple[str, str] | None) -> Skeleton | None:
        """A skeleton for reading only (`parse`), for templates that normalise some text, so that the strict skeleton
        fails: those that write a reasoning block (`think` tags) before some assistant contents and not others (Qwen3:
        only after the last user message; the block is read as part of the content, the protocol splits it off),
        or that rewrite what they render. It is kept when
        reading each probe rendering back gives a conversation that renders to the same text."""
        return (cls._learn(proto, trim=False, think=think, reader=True)
                or cls._learn(proto, trim=True, think=think, reader=True))

    @classmethod
    def _learn(cls, proto, trim: bool, think: tuple[str, str] | None = None, reader: bool = False) -> Skeleton | None:
        sk = cls(proto, trim, think, reader)
        shapes = [("user", "assistant"), ("system", "user", "assistant"), ("user", "assistant", "user", "assistant"),
                  ("system", "user", "assistant", "user", "assistant", "user"), ("user",), ("system", "user"),
                  ("user", "assistant", "user"), ("system", "user", "assistant", "user", "assistant")]
        try:
            for shape in shapes:
                for gen in (False, True):
                    if not sk._observe(shape, gen):
                        return None
            for k, shape in enumerate(shapes):  # verify on other contents: whitespace, newlines, think tags ...
                for gen in (False, True):
                    texts = [cls.PROBE_TEXTS[(k + j) % len(cls.PROBE_TEXTS)] + f"{j}" for j in range(len(shape))]
                    conv = Conversation([Message(r, t) for r, t in zip(shape, texts, strict=True)])
                    expected = proto.render_escaped(conv, gen)
                    if reader:  # what it reads back must render to the same text
                        if proto.read_back(sk, expected) is None:
                            return None
                    elif sk._text(conv, gen) != expected:
                        return None
        except (TemplateError, KeyError, ProtocolError):
            return None
        return sk

    def _observe(self, shape, gen) -> bool:
        marks = [f"\u2063M{j}\u2063" for j in range(len(shape))]
        conv = Conversation([Message(r, t) for r, t in zip(shape, marks, strict=True)])
        text = self.proto.render_escaped(conv, gen)
        pos, cuts = 0, []
        for mark in marks:
            at = text.find(mark, pos)
            if at < 0 or text.count(mark) != 1:
                return False
            cuts.append((at, at + len(mark)))
            pos = at + len(mark)
        entries = [(self.first, (shape[0], shape[1] if len(shape) > 1 else END, gen), text[: cuts[0][0]])]
        for j in range(len(shape) - 1):
            entries.append((self.gap, (shape[j], shape[j + 1], j == 0), text[cuts[j][1]: cuts[j + 1][0]]))
        entries.append((self.last, (shape[-1], len(shape) == 1, gen), text[cuts[-1][1]:]))
        if self.think is not None:  # an empty reasoning block before an assistant content is the content's
            block = "".join(self.think)
            entries = [(t, k, v[: -len(block)] if v.endswith(block) and nxt == "assistant" else v)
                       for (t, k, v), nxt in zip(entries, [*shape, END], strict=True)]
        for table, key, value in entries:
            if table.setdefault(key, value) != value:
                return False
        return True

    def _pieces(self, conv: Conversation, gen: bool) -> list[str]:
        msgs = conv.messages
        out = [self.first[(msgs[0].role, msgs[1].role if len(msgs) > 1 else END, gen)]]
        for j, m in enumerate(msgs):
            out.append(self.proto.escaper.escape(m.content.strip() if self.trim else m.content))
            if j + 1 < len(msgs):
                out.append(self.gap[(m.role, msgs[j + 1].role, j == 0)])
        out.append(self.last[(msgs[-1].role, len(msgs) == 1, gen)])
        return out

    def _text(self, conv: Conversation, gen: bool) -> str:
        return "".join(self._pieces(conv, gen))

    def layout(self, conv: Conversation, gen: bool) -> Layout | None:
        """The conversation as template gaps and contents (the encoder does the rest); None when the skeleton does not
        cover it (tools, tool calls, names, reasoning, a role or a turn order the template was not seen rendering)."""
        if conv.tools or self.reader:  # a reader does not render
            return None
        msgs = conv.messages
        n = len(msgs)
        roles, gap_of, trim = self.ROLES, self.gap, self.trim
        gaps = [self.first.get((msgs[0].role, msgs[1].role if n > 1 else END, gen))]
        contents, trained = [], []
        for j, m in enumerate(msgs):
            role = m.role
            if role not in roles or m.tool_calls or m.name or m.tool_call_id or m.reasoning_content is not None:
                return None
            if j + 1 < n:
                gaps.append(gap_of.get((role, msgs[j + 1].role, j == 0)))
            contents.append(m.content.strip() if trim else m.content)
            trained.append(role == "assistant" and m.train)
        gaps.append(self.last.get((msgs[-1].role, n == 1, gen)))
        if None in gaps:
            return None
        return Layout(gaps, contents, trained)

    def parse(self, s: str) -> list[tuple[str, str]] | None:
        splitter = self.proto.escaper

        def next_control(pos):
            m = splitter.control_re.search(s, pos) if splitter.control_re else None
            return m.start() if m else len(s)

        def match_gap(pos, gap) -> int | None:
            """Where the content starting at `pos` ends if `gap` follows it; None if it cannot."""
            first = splitter.control_re.search(gap) if splitter.control_re else None
            if first is None:
                at = s.find(gap, pos)
                return at if at >= 0 else None
            lead = gap[: first.start()]
            k = next_control(pos)
            end = k - len(lead)
            if end >= pos and s.startswith(gap, end):
                return end
            return None

        def walk(pos, role, index, gen_used) -> list | None:
            options, limit = [], next_control(pos)  # a content never spans a control token
            for (r, is_first, _gen), tail in self.last.items():
                if r == role and is_first == (index == 0):
                    end = match_gap(pos, tail) if tail else len(s)
                    if end is not None and end + len(tail) == len(s) and end <= limit:
                        options.append([(role, s[pos:end])])
            for (r, nxt, is_first), gap in self.gap.items():
                if r == role and is_first == (index == 0) and gap:
                    end = match_gap(pos, gap)
                    if end is not None and end <= limit:
                        rest = walk(end + len(gap), nxt, index + 1, gen_used)
                        if rest is not None:
                            options.append([(role, s[pos:end]), *rest])
            return max(options, key=len) if options else None

        for (role, _, _gen), head in sorted(self.first.items(), key=lambda kv: -len(kv[1])):
            if s.startswith(head):  # the longest head first: a default system prompt is the template's, not a message
                found = walk(len(head), role, 0, False)
                if found is not None:
                    return found
        return None
