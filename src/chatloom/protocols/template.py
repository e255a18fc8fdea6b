"""The `hf` protocol: any Jinja chat template, rendered as transformers renders it, tokenized without injection.

Text: `render_text` is what `apply_chat_template(..., tokenize=False)` returns, with or without a tokenizer (bos/eos
come from the caller, the tokenizer_config.json source or the tokenizer, else they are empty, as in transformers).

Ids: message text is escaped (control-token strings become private-use sentinels), the template is rendered, each
message's content is found in the output and the text between contents becomes the layout's gaps; the one encoder
(encoder.py) splits gaps on the control tokens the template placed and encodes the text with special-token parsing
off. For a conversation without injected control text the ids equal `tokenizer.apply_chat_template(..., tokenize=True)`;
with injected text they stay plain text.

Reasoning: an assistant message's `reasoning_content` is passed to the template as the message's `reasoning_content`
(as transformers does); where the template renders it (Qwen3: inside `<think>`), it is a content of its own in the
layout, supervised unless `train_reasoning` is off. A template that drops it (Qwen3 for turns before the last user
query) drops it from the ids too. Everything the template writes for an assistant turn after its generation prompt is
what the model must generate, so it is supervised: the `<think>\\n` ... `\\n</think>\\n\\n` frame around the reasoning
(and Qwen3's empty `<think>\\n\\n</think>\\n\\n` before a last reply without reasoning) whether `train_reasoning` is on or
off (encoder.py's framed gaps), then content and end-of-turn token. Whitespace alone between the generation prompt and
the content (`[/INST] ` + reply) stays template text, as before.

Mask: assistant content plus the end-of-turn token that closes it (no `{% generation %}` markers needed); the
end-of-turn token is the first control token the template places after an assistant reply (`<|im_end|>`, `</s>`,
`<end_of_turn>` ... when the tokenizer has it). A template whose turns end in no control token still renders text;
`render` then says why it cannot place a mask.

Fast path: most templates are a fixed string between messages that depends only on the roles around it (skeleton.py);
conversations it covers are laid out without Jinja. The skeleton is also what `parse` reads ids back with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from ..conversation import Conversation, Message, ValidationError
from ..tokenizers import Tokenizer, load_tokenizer
from .base import Protocol, ProtocolError
from .encoder import Layout
from .escape import Escaper
from .jinja_env import GEN_CLOSE, GEN_OPEN, TemplateError, compile_template, render
from .skeleton import Skeleton

_CONTROL_LITERAL = re.compile(r"<\|[^|<>\s'\"]{1,40}\|>|<｜[^｜<>\s'\"]{1,40}｜>")


def message_dicts(conv: Conversation | Sequence) -> list[dict]:
    """Messages as the dicts a chat template sees (as a user passes them to transformers: no `train` key)."""
    out = []
    for m in conv.messages if isinstance(conv, Conversation) else conv:
        out.append(m.to_dict() if isinstance(m, Message) else dict(m))
    for d in out:
        d.pop("train", None)
    return out


class TemplateProtocol(Protocol):
    """A chat template as a protocol. Without a tokenizer it renders text only (`render_text`); with one it renders
    ids and masks too, once it finds the token that ends an assistant turn in the template."""

    name = "hf"

    def __init__(self, template: str, tokenizer: Tokenizer | None = None, *, control_tokens: Sequence[str] = (),
                 bos_token: str | None = None, eos_token: str | None = None, template_vars: dict | None = None,
                 fast: bool = True):
        if not isinstance(template, str) or not template.strip():
            raise ProtocolError("hf: empty chat template")
        compile_template(template)  # a syntax error is reported as such, before anything else
        self.template = template
        literals = _CONTROL_LITERAL.findall(template)
        self.bos_token = bos_token if bos_token is not None else getattr(tokenizer, "bos_token", None)
        self.eos_token = eos_token if eos_token is not None else getattr(tokenizer, "eos_token", None)
        wanted = [*control_tokens, *literals, *(t for t in (self.bos_token, self.eos_token) if t)]
        self.control_tokens = tuple(dict.fromkeys(t for t in wanted if t))
        pad = getattr(tokenizer, "pad_token", None)
        self.template_vars = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "", "pad_token": pad or "",
                              **(template_vars or {})}
        self.bos_tokens = (self.template_vars["bos_token"],) if self.template_vars["bos_token"] else ()
        self.skeleton = None
        self.end_of_turn = ""
        self._generation_prompt: str | None = None
        self._reasoning_tags: tuple | None = None  # (tags,) once learned
        self._reader: tuple | None = None  # (Skeleton or None,) once learned
        if tokenizer is None:
            self.tokenizer = None
            self.added_tokens = []
            self.escaper = Escaper([*self.control_tokens, GEN_OPEN, GEN_CLOSE])
            self._unusable = ("hf: this protocol has no tokenizer: it renders text (render_text) but not ids; "
                              "pass a tokenizer to from_template")
            return
        super().__init__(tokenizer)
        controls = sorted(set(self.tokenizer.special_tokens) | set(self.control_tokens))
        self.escaper = Escaper([*controls, GEN_OPEN, GEN_CLOSE])
        self._unusable = None
        try:
            self.end_of_turn = self._learn_end_of_turn()
        except ProtocolError as e:  # text still renders; ids and masks say why they cannot
            self._unusable = str(e)
            return
        self.skeleton = Skeleton.learn(self) if fast else None

    def _usable(self):
        if self._unusable:
            raise ProtocolError(self._unusable)

    @property
    def end_of_turn_id(self) -> int:
        self._usable()  # a template without a usable turn token says why, not "token '' has no id"
        return super().end_of_turn_id

    # ------------------------------------------------------------------------------------------------ text
    def render_text(self, messages, add_generation_prompt: bool = False, **template_vars) -> str:
        """The string transformers' `apply_chat_template(..., tokenize=False)` returns for the same inputs."""
        context = {**self.template_vars, **template_vars}
        text, _ = render(self.template, messages=message_dicts(messages), add_generation_prompt=add_generation_prompt, **context)
        return text

    def render_escaped(self, conv: Conversation, add_generation_prompt: bool, messages=None) -> str:
        """The template's rendering of `conv` (or of `messages` with conv's tools) with every control-token string in
        message text escaped, so that the control tokens in the result are exactly the ones the template placed."""
        msgs = message_dicts(conv if messages is None else messages)
        for m in msgs:
            for key in ("content", "reasoning_content"):
                if isinstance(m.get(key), str):
                    m[key] = self.escaper.escape(m[key])
        context = dict(self.template_vars)
        if isinstance(conv, Conversation) and conv.tools:
            context["tools"] = conv.tools
        text, _ = render(self.template, messages=msgs, add_generation_prompt=add_generation_prompt, **context)
        return text

    def _learn_end_of_turn(self) -> str:
        probe = Conversation([Message("user", "Hi"), Message("assistant", "Answer\u2063text")])
        try:
            text = self.render_escaped(probe, False)
        except TemplateError as e:
            raise ProtocolError(f"hf: the template cannot render a plain user/assistant exchange: {e}") from e
        at = text.rfind("Answer\u2063text")
        if at < 0:
            raise ProtocolError("hf: the template does not render assistant content verbatim; cannot find the turn end")
        for kind, value, _ in self.escaper.split(text[at:]):
            if kind == "token":
                return value
        raise ProtocolError("hf: no control token closes an assistant turn in this template; pass control_tokens= "
                            "with its end-of-turn token (e.g. '<end_of_turn>') or use a tokenizer that has it")

    # ------------------------------------------------------------------------------------------------ layout
    def render_batch(self, convs, add_generation_prompt: bool = False, workers: int = 1):
        self._usable()
        return super().render_batch(convs, add_generation_prompt, workers)

    def layout(self, conv: Conversation, add_generation_prompt: bool = False) -> Layout:
        self._usable()
        fast = self.skeleton.layout(conv, add_generation_prompt) if self.skeleton is not None else None
        return fast if fast is not None else self._layout_jinja(conv, add_generation_prompt)

    def _layout_jinja(self, conv: Conversation, add_generation_prompt: bool) -> Layout:
        """Render with Jinja and find each message's content in the output; the text between contents is the gaps.

        A content is found exactly by rendering the conversation again with a sentinel in its place: when the text
        around the sentinel is the text around the content, what lies between is the content as the template renders
        it (as is, or with some of its leading/trailing whitespace trimmed). Templates that make other text depend
        on a message (a system prompt moved into a user turn) fall back to searching for the content in order."""
        full = self.render_escaped(conv, add_generation_prompt)
        escape = self.escaper.escape
        msgs = conv.messages
        spans = [self._span_by_sentinel(conv, i, full, add_generation_prompt, escape(m.content)) or None
                 for i, m in enumerate(msgs)]
        for i, span in enumerate(spans):  # a content after a later message's was moved there (a system prompt)
            if span is not None and any(s is not None and s[0] < span[0] for s in spans[i + 1:]):
                spans[i] = None
        cursor = 0
        cuts: list[tuple[int, int]] = []
        owners: list[int] = []
        trained: list[bool] = []
        extends: list[bool] = []
        for i, m in enumerate(msgs):
            turn_start, first_cut = cursor, len(cuts)
            r_span = None
            if m.role == "assistant" and m.reasoning_content is not None:  # where the template renders it, if it does
                r_span = self._span_by_sentinel(conv, i, full, add_generation_prompt, escape(m.reasoning_content),
                                                key="reasoning_content")
                if r_span and r_span[0] >= cursor and (spans[i] is None or r_span[1] <= spans[i][0]):
                    cuts.append(r_span)
                    owners.append(i)
                    trained.append(m.train and self.train_reasoning)
                    extends.append(False)
                    cursor = r_span[1]
            if r_span is None and m.role == "assistant" and m.reasoning_content:  # no sentinel answer: look for it
                limit = spans[i][0] if spans[i] is not None and spans[i][0] >= cursor else -1
                if limit < 0:  # before the end of this turn (not the end of the previous one, right at the cursor)
                    skip = cursor + len(full[cursor:]) - len(full[cursor:].lstrip())
                    from_ = skip + len(self.end_of_turn) if full.startswith(self.end_of_turn, skip) else cursor
                    limit = full.find(self.end_of_turn, from_)
                # templates strip the newlines around reasoning (Qwen3: `<think>\n` + reasoning.strip('\n') + ...):
                # those are the template's, so the reasoning as rendered is looked for without them first
                r_at, r_text = _locate(full, escape(m.reasoning_content.strip("\n")), cursor)
                if r_at < 0:
                    r_at, r_text = _locate(full, escape(m.reasoning_content), cursor)
                if r_at >= 0 and r_text and (limit < 0 or r_at + len(r_text) <= limit):
                    cuts.append((r_at, r_at + len(r_text)))
                    owners.append(i)
                    trained.append(m.train and self.train_reasoning)
                    extends.append(False)
                    cursor = r_at + len(r_text)
            owners.append(i)
            trained.append(m.role == "assistant" and m.train)
            extends.append(m.role == "assistant" and bool(m.tool_calls))
            target = escape(m.content)
            found = spans[i]
            if found is not None and found[0] >= cursor:
                at, end = found
            else:
                at, target = _locate(full, target, cursor)
                if at >= 0 and m.role != "assistant" and i + 1 < len(msgs):
                    following = escape(msgs[i + 1].content).strip()
                    nxt = full.find(following, cursor) if following else -1
                    if 0 <= nxt < at:  # the template moved this message later (e.g. system into the last user turn)
                        at, target = -1, ""
                if at < 0:
                    if m.role == "assistant" and (m.train and not m.tool_calls):
                        raise ProtocolError(f"hf: the template changes the text of assistant message {i}; cannot place "
                                            "its loss mask (use a template that renders assistant content verbatim)")
                    at, target = cursor, ""
                end = at + len(target)
            cuts.append((at, end))
            cursor = end
            if m.role == "assistant":
                reply = self._reply_start(full, turn_start, cuts[first_cut][0])
                if reply is not None:  # what the model writes before the content (Qwen3's `<think>` block) is framed
                    cuts.insert(first_cut, (reply, reply))
                    owners.insert(first_cut, i)
                    trained.insert(first_cut, m.train)
                    extends.insert(first_cut, False)
            if m.role == "assistant":  # the next message starts after this turn's end
                turn_end = full.find(self.end_of_turn, end)
                following = escape(msgs[i + 1].content).strip() if i + 1 < len(msgs) else ""
                nxt = full.find(following, end) if following else -1
                if turn_end >= 0 and not 0 <= nxt < turn_end:
                    cursor = turn_end + len(self.end_of_turn)
        gaps = [full[: cuts[0][0]]]
        gaps += [full[cuts[j][1]: cuts[j + 1][0]] for j in range(len(cuts) - 1)]
        gaps.append(full[cuts[-1][1]:])
        unescape = self.escaper.unescape
        contents = [unescape(full[a:b]) for a, b in cuts]
        if len(owners) == len(msgs):
            return Layout(gaps, contents, trained, extends)
        framed = [False] + [owners[j] == owners[j + 1] and msgs[owners[j]].role == "assistant" and msgs[owners[j]].train
                            for j in range(len(cuts) - 1)] + [False]
        return Layout(gaps, contents, trained, extends, owners, framed)

    def _reply_start(self, full: str, lo: int, hi: int) -> int | None:
        """Where an assistant turn's reply starts in `full`: right after the template's generation prompt, if it is
        found between `lo` (the turn's start) and `hi` (its first content) and more than whitespace follows it there
        (a reasoning block, `<think>\\n\\n</think>\\n\\n` included); None otherwise (the content starts the reply)."""
        gen = self.generation_prompt
        if not gen or hi <= lo:
            return None
        at = full.rfind(gen, lo, hi)
        if at < 0 or not full[at + len(gen): hi].strip():
            return None
        return at + len(gen)

    @property
    def generation_prompt(self) -> str:
        """The text `add_generation_prompt` appends after a user turn (escaped; `<|im_start|>assistant\\n` for Qwen3),
        or "" for a template that appends nothing or makes it depend on the conversation."""
        if self._generation_prompt is None:
            probe = Conversation([Message("user", "Hi")])
            try:
                without, with_ = self.render_escaped(probe, False), self.render_escaped(probe, True)
            except TemplateError:
                without, with_ = "", ""
            self._generation_prompt = with_[len(without):] if with_.startswith(without) else ""
        return self._generation_prompt

    _SENTINEL = "\u2063\u2062S\u2062\u2063"

    def _span_by_sentinel(self, conv: Conversation, i: int, full: str, gen: bool, target: str,
                          key: str = "content") -> tuple[int, int] | bool | None:
        """(start, end) of message i's content (or other `key`) in `full`, from a rendering with a sentinel in its
        place; False when the template does not render it at all (the rendering is `full` unchanged); None when the
        template renders the sentinel more than once, changes the text around it, or changes more than whitespace."""
        msgs = message_dicts(conv)
        msgs[i][key] = self._SENTINEL
        try:
            text = self.render_escaped(conv, gen, msgs)
        except TemplateError:
            return None
        at = text.find(self._SENTINEL)
        if at < 0 and text == full:
            return False
        if at < 0 or text.find(self._SENTINEL, at + 1) >= 0:
            return None
        tail = len(text) - at - len(self._SENTINEL)
        end = len(full) - tail
        if end < at or not full.startswith(text[:at]) or not full.endswith(text[at + len(self._SENTINEL):]):
            return None
        rendered = full[at:end]
        if rendered != target and not (rendered in target and rendered.strip() == target.strip()):
            return None
        return at, end

    # ------------------------------------------------------------------------------------------------ parse
    def parse(self, ids: Sequence[int]) -> Conversation:
        """Ids back to the conversation the text holds. Templates with a skeleton read their contents with it (an
        assistant content that starts with the template's reasoning block is read as reasoning + content when that
        renders to the same text); templates that write a reasoning block before some replies only (Qwen3) are read
        by a reader skeleton, and what it reads must render back to the same text. What a template normalised away
        (Qwen3 drops the reasoning of turns before the last user message) is not in the text, so not in the result."""
        self._usable()
        s = "".join(v if k == "token" else self.escaper.escape(v) for k, v in self.split_control(ids))
        if self.skeleton is not None:
            messages = self.skeleton.parse(s)
            if messages is None:
                raise ProtocolError(f"hf: ids do not follow this chat template: {self.escaper.unescape(s[:80])!r}...")
            plain = self._conversation(messages, split=False)
            split = self._conversation(messages, split=True)
            conv = split if not split.same_messages(plain) and self._renders_to(split, s) else plain
        else:
            reader = self.reader
            if reader is None:
                raise ProtocolError("hf: this template is not regular enough to be parsed back (no skeleton)")
            conv = self.read_back(reader, s)
            if conv is None:
                raise ProtocolError(f"hf: ids do not follow this chat template: {self.escaper.unescape(s[:80])!r}...")
        try:
            return conv.validate()
        except ValidationError as e:
            raise ProtocolError(f"hf: parsed conversation is not valid: {e}") from e

    @property
    def reasoning_tags(self) -> tuple[str, str] | None:
        """The text the template writes around an assistant's reasoning, before and after it (`<think>\\n`,
        `\\n</think>\\n\\n` for Qwen3), learned by rendering a probe; None if it does not render reasoning."""
        if self._reasoning_tags is None:
            self._reasoning_tags = (self._learn_reasoning_tags(),)
        return self._reasoning_tags[0]

    def _learn_reasoning_tags(self) -> tuple[str, str] | None:
        r, c = "\u2063R\u2063", "\u2063C\u2063"
        probe = Conversation([Message("user", "Hi"), Message("assistant", c, reasoning_content=r)])
        try:
            text = self.render_escaped(probe, False)
        except TemplateError:
            return None
        gen = self.generation_prompt
        at_r, at_c = text.find(r), text.find(c)
        if not gen or text.count(r) != 1 or text.count(c) != 1 or not 0 <= at_r < at_c:
            return None
        start = text.rfind(gen, 0, at_r)
        if start < 0:
            return None
        open_, close = self.escaper.unescape(text[start + len(gen): at_r]), self.escaper.unescape(text[at_r + len(r): at_c])
        return (open_, close) if open_.strip() and close.strip() else None

    @property
    def reader(self) -> Skeleton | None:
        """The skeleton `parse` reads with when the template has no skeleton because it normalises some text: it
        renders reasoning before some replies only (Qwen3), or rewrites a content (DeepSeek-R1 keeps what follows
        `</think>`). Learned on first use; None if reading back its probes does not give what renders them."""
        if self._reader is None:
            tags = self.reasoning_tags
            self._reader = (Skeleton.learn_reader(self, tuple(self.escaper.escape(t) for t in tags) if tags else None),)
        return self._reader[0]

    def read_back(self, skeleton: Skeleton, s: str) -> Conversation | None:
        """The conversation an escaped rendering `s` holds, read by `skeleton` with reasoning blocks split off; None
        unless it renders back to `s` exactly."""
        messages = skeleton.parse(s)
        if messages is None:
            return None
        conv = self._conversation(messages, split=True)
        return conv if self._renders_to(conv, s) else None

    def _conversation(self, messages: list[tuple[str, str]], split: bool) -> Conversation:
        """Parsed (role, escaped text) pairs as a Conversation; `split`: an assistant text that starts with the
        reasoning block is its reasoning and its content."""
        unescape = self.escaper.unescape
        out = []
        tags = self.reasoning_tags if split else None
        for role, text in messages:
            text, reasoning = unescape(text), None
            if tags is not None and role == "assistant" and text.startswith(tags[0]):
                close = text.find(tags[1], len(tags[0]))
                if close >= 0:
                    reasoning, text = text[len(tags[0]): close], text[close + len(tags[1]):]
            out.append(Message(role, text, reasoning_content=reasoning))
        return Conversation(out)

    def _renders_to(self, conv: Conversation, s: str) -> bool:
        for gen in (False, True):
            try:
                if self.render_escaped(conv, gen) == s:
                    return True
            except TemplateError:
                return False
        return False

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
    """An `hf` protocol from a template string, `.jinja` file, `tokenizer_config.json` or model directory. Without a
    tokenizer (and not a model directory) it renders text only: `render_text` works, `render` says it needs one."""
    template, info = read_template_source(source)
    if tokenizer is None and Path(str(source)).is_dir():
        tokenizer = source
    tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else None
    kw.setdefault("control_tokens", info.get("control_tokens", []))
    kw.setdefault("bos_token", info.get("bos_token"))
    kw.setdefault("eos_token", info.get("eos_token"))
    return TemplateProtocol(template, tokenizer, **kw)
