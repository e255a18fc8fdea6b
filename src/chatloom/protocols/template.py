"""The `hf` protocol: any Jinja chat template, rendered as transformers renders it, tokenized without injection.

Rendering: message text is escaped (control-token strings become private-use sentinels), the template is rendered, the
output is split on the control tokens the template placed, and the text between them is un-escaped and encoded with
special-token parsing off. For a conversation without injected control text the ids equal
`tokenizer.apply_chat_template(..., tokenize=True)`; with injected text they stay plain text.

Mask: assistant content plus the end-of-turn token that closes it, found in the rendered text (no `{% generation %}`
markers needed). The end-of-turn token is learned from the template itself.

Fast path: most templates are a fixed string between messages that depends only on the roles around it. When probing
shows that (the "skeleton" reproduces the template exactly on a battery of shapes and contents), conversations are
rendered from the skeleton without Jinja; otherwise, or when a conversation uses tools, Jinja renders every time.
The skeleton is also what `parse` reads ids back with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from ..conversation import Conversation, Message, ValidationError
from ..tokenizers import Tokenizer, load_tokenizer
from .base import NO_MESSAGE, Part, Protocol, ProtocolError
from .escape import Escaper
from .jinja_env import GEN_CLOSE, GEN_OPEN, TemplateError, compile_template, render

_CONTROL_LITERAL = re.compile(r"<\|[^|<>\s'\"]{1,40}\|>|<｜[^｜<>\s'\"]{1,40}｜>")
END = "$end"


def message_dicts(conv: Conversation | Sequence) -> list[dict]:
    if isinstance(conv, Conversation):
        return [m.to_dict() | {"role": m.role, "content": m.content} for m in conv.messages]
    out = []
    for m in conv:
        out.append(m.to_dict() if isinstance(m, Message) else dict(m))
    for d in out:
        d.pop("train", None)
    return out


class TemplateProtocol(Protocol):
    name = "hf"

    def __init__(self, template: str, tokenizer: Tokenizer, *, control_tokens: Sequence[str] = (),
                 bos_token: str | None = None, eos_token: str | None = None, template_vars: dict | None = None,
                 fast: bool = True):
        if not isinstance(template, str) or not template.strip():
            raise ProtocolError("hf: empty chat template")
        compile_template(template)  # a syntax error is reported as such, before anything else
        self.template = template
        literals = _CONTROL_LITERAL.findall(template)
        self.bos_token = bos_token if bos_token is not None else tokenizer.bos_token
        self.eos_token = eos_token if eos_token is not None else tokenizer.eos_token
        wanted = [*control_tokens, *literals, *(t for t in (self.bos_token, self.eos_token) if t)]
        self.control_tokens = tuple(dict.fromkeys(t for t in wanted if t))
        super().__init__(tokenizer)
        self.template_vars = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "",
                              "pad_token": tokenizer.pad_token or "", **(template_vars or {})}
        self._refresh_escaper()
        self.end_of_turn = self._learn_end_of_turn()
        self._gaps = None
        self.skeleton = _Skeleton.learn(self) if fast else None

    def _refresh_escaper(self):
        controls = sorted(set(self.tokenizer.special_tokens) | set(self.control_tokens))
        self.escaper = Escaper([*controls, GEN_OPEN, GEN_CLOSE])
        self._splitter = Escaper(controls)

    # ------------------------------------------------------------------------------------------------ text
    def render_text(self, messages, add_generation_prompt: bool = False, **template_vars) -> str:
        """The string transformers' `apply_chat_template(..., tokenize=False)` returns for the same inputs."""
        context = {**self.template_vars, **template_vars}
        text, _ = render(self.template, messages=message_dicts(messages), add_generation_prompt=add_generation_prompt, **context)
        return text

    def _render_escaped(self, conv: Conversation, add_generation_prompt: bool, messages=None) -> str:
        msgs = message_dicts(conv if messages is None else messages)
        for m in msgs:
            if isinstance(m.get("content"), str):
                m["content"] = self.escaper.escape(m["content"])
        context = dict(self.template_vars)
        if isinstance(conv, Conversation) and conv.tools:
            context["tools"] = conv.tools
        text, _ = render(self.template, messages=msgs, add_generation_prompt=add_generation_prompt, **context)
        return text

    def _learn_end_of_turn(self) -> str:
        probe = Conversation([Message("user", "Hi"), Message("assistant", "Answer\u2063text")])
        try:
            text = self._render_escaped(probe, False)
        except TemplateError as e:
            raise ProtocolError(f"hf: the template cannot render a plain user/assistant exchange: {e}") from e
        at = text.rfind("Answer\u2063text")
        if at < 0:
            raise ProtocolError("hf: the template does not render assistant content verbatim; cannot find the turn end")
        for kind, value, _ in self._splitter.split(text[at:]):
            if kind == "token":
                return value
        raise ProtocolError("hf: no control token closes an assistant turn in this template; pass control_tokens= "
                            "with its end-of-turn token (e.g. '<end_of_turn>') or use a tokenizer that has it")

    # ------------------------------------------------------------------------------------------------ parts
    def parts(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Part]:
        if self.skeleton is not None and self.skeleton.covers(conv):
            return self.skeleton.parts(conv, add_generation_prompt)
        return self._parts_jinja(conv, add_generation_prompt)

    def gap_renderer(self):
        if self.skeleton is None:
            return None
        if self._gaps is None:
            from .gaps import GapRenderer

            self._gaps = GapRenderer(self, self._splitter, self.end_of_turn)
        return self._gaps

    def gap_item(self, conv: Conversation, add_generation_prompt: bool):
        sk = self.skeleton
        if sk is None or not sk.covers(conv):
            return None
        msgs, n = conv.messages, len(conv.messages)
        gaps = [sk.first[(msgs[0].role, msgs[1].role if n > 1 else END, add_generation_prompt)]]
        gaps += [sk.gap[(msgs[j].role, msgs[j + 1].role, j == 0)] for j in range(n - 1)]
        gaps.append(sk.last[(msgs[-1].role, n == 1, add_generation_prompt)])
        contents = [m.content.strip() if sk.trim else m.content for m in msgs]
        return gaps, contents, [m.role == "assistant" and m.train for m in msgs]

    def _parts_jinja(self, conv: Conversation, add_generation_prompt: bool) -> list[Part]:
        full = self._render_escaped(conv, add_generation_prompt)
        cursor = 0
        regions: list[tuple[int, int, int, bool]] = []  # (start, end, message, supervised)
        region_start = 0
        for i, m in enumerate(conv.messages):
            target = self.escaper.escape(m.content)
            search_from = max(cursor, self._anchor(conv, i, full))
            at, target = _locate(full, target, search_from)
            if at >= 0 and m.role != "assistant" and i + 1 < len(conv.messages):
                following = self.escaper.escape(conv.messages[i + 1].content).strip()
                nxt = full.find(following, cursor) if following else -1
                if 0 <= nxt < at:  # the template moved this message later (e.g. system into the last user turn)
                    at, target = -1, ""
            if at < 0:
                if m.role == "assistant" and (m.train and not m.tool_calls):
                    raise ProtocolError(f"hf: the template changes the text of assistant message {i}; cannot place its loss "
                                        "mask (use a template that renders assistant content verbatim)")
                at = search_from
                target = ""
            end = at + len(target)
            if m.role == "assistant":
                turn_end = full.find(self.end_of_turn, end)
                following = self.escaper.escape(conv.messages[i + 1].content).strip() if i + 1 < len(conv.messages) else ""
                nxt = full.find(following, end) if following else -1
                if turn_end < 0 or 0 <= nxt < turn_end:  # this template leaves the turn open: supervise the content
                    turn_end = end
                else:
                    turn_end += len(self.end_of_turn)
                regions.append((region_start, at, i, False))
                regions.append((at, turn_end, i, m.train))
                region_start = cursor = turn_end
            else:
                regions.append((region_start, end, i, False))
                region_start = cursor = end
        regions.append((region_start, len(full), NO_MESSAGE, False))
        return self._cut(full, regions)

    _SENTINEL = "\u2063\u2062S\u2062\u2063"

    def _anchor(self, conv: Conversation, i: int, full: str) -> int:
        """Where message i's content can start in `full`: render the messages before it plus a sentinel in its place;
        if what precedes the sentinel is a prefix of the full rendering, the content starts there (or later)."""
        probe = [*conv.messages[:i], Message(conv.messages[i].role, self._SENTINEL)]
        try:
            text = self._render_escaped(conv, False, probe)
        except TemplateError:
            return 0
        at = text.find(self._SENTINEL)
        return at if at >= 0 and full.startswith(text[:at]) else 0

    def _cut(self, full: str, regions) -> list[Part]:
        out: list[Part] = []
        pieces = self._splitter.split(full)
        for kind, value, start in pieces:
            end = start + len(value)
            for r_start, r_end, message, supervised in regions:
                a, b = max(start, r_start), min(end, r_end)
                if a >= b:
                    continue
                if kind == "token":
                    out.append(Part(token=value, message=message, supervised=supervised))
                    break
                out.append(Part(text=self.escaper.unescape(full[a:b]), message=message, supervised=supervised))
        return out

    # ------------------------------------------------------------------------------------------------ parse
    def parse(self, ids: Sequence[int]) -> Conversation:
        if self.skeleton is None:
            raise ProtocolError("hf: this template is not regular enough to be parsed back (no skeleton)")
        s = "".join(v if k == "token" else self.escaper.escape(v) for k, v in self.split_control(ids))
        messages = self.skeleton.parse(s)
        if messages is None:
            raise ProtocolError(f"hf: ids do not follow this chat template: {self.escaper.unescape(s[:80])!r}...")
        try:
            return Conversation([Message(r, self.escaper.unescape(c)) for r, c in messages]).validate()
        except ValidationError as e:
            raise ProtocolError(f"hf: parsed conversation is not valid: {e}") from e

    @property
    def chat_template(self) -> str:
        return self.template


def _locate(full: str, target: str, start: int) -> tuple[int, str]:
    """Where message text `target` is in `full` from `start`, and the text as rendered (as is, or trimmed):
    right at `start` (after optional whitespace) first, then anywhere later."""
    if not target:
        return -1, target
    stripped = target.strip()
    skip = start + len(full[start:]) - len(full[start:].lstrip())
    for candidate in (target, stripped):
        for pos in (start, skip):
            if candidate and full.startswith(candidate, pos):
                return pos, candidate
    for candidate in (target, stripped):
        at = full.find(candidate, start) if candidate else -1
        if at >= 0:
            return at, candidate
    return -1, target


class _Skeleton:
    """The template as fixed strings between message contents, keyed by the roles around them (see module doc)."""

    ROLES = ("system", "user", "assistant")
    PROBE_TEXTS = ("P", " spaced out \n", "\nnew\nlines\n\n", "<think>x</think> y", "  ", "tab\there")

    def __init__(self, proto: TemplateProtocol, trim: bool = False):
        self.proto = proto
        self.trim = trim  # the template strips message content (`content | trim`), e.g. Llama 3
        self.first: dict[tuple, str] = {}  # (first role, second role or END, gen) -> text before the first content
        self.gap: dict[tuple, str] = {}  # (prev role, next role, prev is first) -> text between contents
        self.last: dict[tuple, str] = {}  # (last role, is first, gen) -> text after the last content
        self._split_cache: dict[str, list] = {}
        self._parts_cache: dict[tuple, list[Part]] = {}

    @classmethod
    def learn(cls, proto: TemplateProtocol) -> _Skeleton | None:
        return cls._learn(proto, trim=False) or cls._learn(proto, trim=True)

    @classmethod
    def _learn(cls, proto: TemplateProtocol, trim: bool) -> _Skeleton | None:
        sk = cls(proto, trim)
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
                    expected = proto._render_escaped(conv, gen)
                    if sk._text(conv, gen) != expected:
                        return None
        except (TemplateError, KeyError, ProtocolError):
            return None
        return sk

    def _observe(self, shape, gen) -> bool:
        marks = [f"\u2063M{j}\u2063" for j in range(len(shape))]
        conv = Conversation([Message(r, t) for r, t in zip(shape, marks, strict=True)])
        text = self.proto._render_escaped(conv, gen)
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
        for table, key, value in entries:
            if table.setdefault(key, value) != value:
                return False
        return True

    def covers(self, conv: Conversation) -> bool:
        if conv.tools:
            return False
        n = len(conv.messages)
        for j, m in enumerate(conv.messages):
            if m.role not in self.ROLES or m.tool_calls or m.name or m.tool_call_id:
                return False
            nxt = conv.messages[j + 1].role if j + 1 < n else END
            if j == 0 and (m.role, nxt, False) not in self.first:
                return False
            if j + 1 < n and (m.role, nxt, j == 0) not in self.gap:
                return False
        return (conv.messages[-1].role, n == 1, False) in self.last

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

    def parts(self, conv: Conversation, gen: bool) -> list[Part]:
        msgs = conv.messages
        escape = self.proto.escaper.escape
        n = len(msgs)
        out = list(self._gap_parts(self.first[(msgs[0].role, msgs[1].role if n > 1 else END, gen)], NO_MESSAGE, False, 0))
        for j, m in enumerate(msgs):
            supervised = m.role == "assistant" and m.train
            text = m.content.strip() if self.trim else m.content
            out.append(Part(text=escape(text) if text else "", message=j, supervised=supervised))
            gap = self.gap[(m.role, msgs[j + 1].role, j == 0)] if j + 1 < n else self.last[(m.role, n == 1, gen)]
            out += self._gap_parts(gap, j, supervised, j + 1 if j + 1 < n else NO_MESSAGE)
        esc = self.proto.escaper.ESCAPE_CHAR
        return [Part(text=self.proto.escaper.unescape(p.text), message=p.message, supervised=p.supervised)
                if p.text is not None and esc in p.text else p for p in out]

    def _gap_parts(self, gap: str, before: int, supervised: bool, after: int) -> list[Part]:
        """The fixed text between two contents as parts: up to its second control token it closes the message before
        (supervised through the end-of-turn token when that message is a trained assistant turn), then it opens the next."""
        key = (gap, before, supervised, after)
        cached = self._parts_cache.get(key)
        if cached is not None:
            return cached  # shared Part objects: gap text is never escaped, so nothing downstream changes them
        pieces = self._split_cache.get(gap)
        if pieces is None:
            pieces = [(kind, value) for kind, value, _ in self.proto._splitter.split(gap)]
            controls = [i for i, (k, _) in enumerate(pieces) if k == "token"]
            opens = controls[1] if len(controls) > 1 else len(pieces)  # the second control token opens the next message
            eot = next((i for i in controls if pieces[i][1] == self.proto.end_of_turn), -1)
            pieces = self._split_cache[gap] = [(k, v, i < opens, i <= eot) for i, (k, v) in enumerate(pieces)]
        out = []
        for kind, value, closes, in_turn in pieces:
            owner = before if closes and before != NO_MESSAGE else after
            sup = supervised and in_turn
            out.append(Part(token=value, message=owner, supervised=sup) if kind == "token"
                       else Part(text=value, message=owner, supervised=sup))
        if len(self._parts_cache) < 65536:
            self._parts_cache[key] = out
        return out

    def parse(self, s: str) -> list[tuple[str, str]] | None:
        splitter = self.proto._splitter

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
            options = []
            for (r, is_first, _gen), tail in self.last.items():
                if r == role and is_first == (index == 0):
                    end = match_gap(pos, tail) if tail else len(s)
                    if end is not None and end + len(tail) == len(s):
                        options.append([(role, s[pos:end])])
            for (r, nxt, is_first), gap in self.gap.items():
                if r == role and is_first == (index == 0) and gap:
                    end = match_gap(pos, gap)
                    if end is not None:
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


# ---------------------------------------------------------------------------------------------------------- sources


def read_template_source(source: str | Path) -> tuple[str, dict]:
    """A chat template and what its tokenizer config says (bos/eos, special added tokens) from: a template string,
    a `.jinja` file, a `tokenizer_config.json`, or a model directory (`chat_template.jinja` wins, as in transformers)."""
    info: dict = {"control_tokens": []}
    text = str(source)
    if isinstance(source, str) and ("{%" in source or "{{" in source):
        return source, info
    path = Path(text)
    if path.is_dir():
        jinja_file = path / "chat_template.jinja"
        config = path / "tokenizer_config.json"
        if config.exists():
            _, info = read_template_source(config) if _config_has_template(config) else ("", _config_info(config))
        if jinja_file.exists():
            return jinja_file.read_text(encoding="utf-8"), info
        if config.exists() and _config_has_template(config):
            return read_template_source(config)
        raise FileNotFoundError(f"{path}: no chat_template.jinja and no chat_template in tokenizer_config.json")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such template file (and not a template string)")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        template = data.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        if not isinstance(template, str):
            raise ValueError(f"{path}: chat_template: missing (this tokenizer_config.json has no chat template)")
        return template, _config_info(path, data)
    return path.read_text(encoding="utf-8"), info


def _config_has_template(path: Path) -> bool:
    return bool(json.loads(path.read_text(encoding="utf-8")).get("chat_template"))


def _token_str(v):
    return v.get("content") if isinstance(v, dict) else v


def _config_info(path: Path, data: dict | None = None) -> dict:
    data = data if data is not None else json.loads(path.read_text(encoding="utf-8"))
    specials = [v.get("content") for v in (data.get("added_tokens_decoder") or {}).values() if v.get("special")]
    specials += [_token_str(t) for t in data.get("additional_special_tokens") or []]
    return {"control_tokens": [t for t in specials if t], "bos_token": _token_str(data.get("bos_token")),
            "eos_token": _token_str(data.get("eos_token"))}


def from_template(source: str | Path, tokenizer: Tokenizer | str | Path | None = None, **kw) -> TemplateProtocol:
    """An `hf` protocol from a template string, `.jinja` file, `tokenizer_config.json` or model directory."""
    template, info = read_template_source(source)
    if tokenizer is None:
        if Path(str(source)).is_dir():
            tokenizer = load_tokenizer(source)
        else:
            raise ValueError("from_template needs a tokenizer unless the source is a model directory")
    tokenizer = load_tokenizer(tokenizer)
    kw.setdefault("control_tokens", info.get("control_tokens", []))
    kw.setdefault("bos_token", info.get("bos_token"))
    kw.setdefault("eos_token", info.get("eos_token"))
    return TemplateProtocol(template, tokenizer, **kw)
