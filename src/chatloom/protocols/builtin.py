"""The built-in formats, declared as strings: gpt4o, chatml and llama3 (DESIGN §2).

Each format is a header (with `{role}`), a footer whose first token ends the turn, and optionally a token placed once at
the start. From that declaration come the parts (what `render` encodes), the parser (a regex over the escaped string)
and a Jinja chat template equal to the protocol, which an exported model directory carries so that transformers, vLLM
and llama.cpp apply the same format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..conversation import Conversation, Message, ValidationError
from .base import NO_MESSAGE, Part, Protocol, ProtocolError
from .escape import Escaper

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "\n<tool_call>\n", "\n</tool_call>"
_TOOL_CALLS_AT_END = re.compile(r"((?:\n<tool_call>\n.*?\n</tool_call>)+)\Z", re.S)


def assistant_text(m: Message) -> str:
    """Assistant content with its tool calls appended (Hermes/Qwen style), as one supervised string."""
    if not m.tool_calls:
        return m.content
    return m.content + "".join(TOOL_CALL_OPEN + json.dumps(c, ensure_ascii=False) + TOOL_CALL_CLOSE for c in m.tool_calls)


def split_tool_calls(text: str) -> tuple[str, list[dict] | None]:
    m = _TOOL_CALLS_AT_END.search(text)
    if not m:
        return text, None
    calls = []
    for block in re.findall(r"\n<tool_call>\n(.*?)\n</tool_call>", m.group(1), re.S):
        try:
            calls.append(json.loads(block))
        except json.JSONDecodeError:
            return text, None
    return text[: m.start()], calls


class TurnProtocol(Protocol):
    """A format where every message is `header(role) + content + footer`."""

    begin: str = ""
    header: str = ""
    footer: str = ""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.escaper = Escaper(self.control_tokens)
        self._gaps = None
        self._header_cache: dict[str, list[tuple[str, str]]] = {}
        self._footer = self._pieces(self.footer)
        if not self._footer or self._footer[0] != ("token", self.end_of_turn):
            raise ProtocolError(f"{self.name}: the footer must start with the end-of-turn token")
        pattern = re.escape(self.header).replace(re.escape("{role}"), "(system|user|assistant|tool)")
        self._turn = re.compile(pattern + "(.*?)" + re.escape(self.footer), re.S)

    def _pieces(self, s: str) -> list[tuple[str, str]]:
        return [(kind, value) for kind, value, _ in self.escaper.split(s)]

    def _header(self, role: str) -> list[tuple[str, str]]:
        h = self._header_cache.get(role)
        if h is None:
            h = self._header_cache[role] = self._pieces(self.header.replace("{role}", role))
        return h

    def parts(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Part]:
        out = [Part(token=self.begin)] if self.begin else []
        for i, m in enumerate(conv.messages):
            out += [Part(text=v, message=i) if k == "text" else Part(token=v, message=i) for k, v in self._header(m.role)]
            supervised = m.role == "assistant" and m.train
            out.append(Part(text=assistant_text(m) if m.role == "assistant" else m.content, message=i, supervised=supervised))
            for j, (k, v) in enumerate(self._footer):
                sup = supervised and j == 0
                out.append(Part(text=v, message=i, supervised=sup) if k == "text" else Part(token=v, message=i, supervised=sup))
        if add_generation_prompt:
            out += [Part(text=v) if k == "text" else Part(token=v) for k, v in self._header("assistant")]
            for p in out[-len(self._header("assistant")):]:
                p.message = NO_MESSAGE
        return out

    def gap_renderer(self):
        if self._gaps is None:
            from .gaps import GapRenderer

            self._gaps = GapRenderer(self, self.escaper, self.end_of_turn)
        return self._gaps

    def gap_item(self, conv: Conversation, add_generation_prompt: bool):
        msgs = conv.messages
        heads = [self.header.replace("{role}", m.role) for m in msgs]
        gaps = [self.begin + heads[0]] + [self.footer + h for h in heads[1:]]
        gaps.append(self.footer + (self.header.replace("{role}", "assistant") if add_generation_prompt else ""))
        contents = [assistant_text(m) if m.role == "assistant" else m.content for m in msgs]
        return gaps, contents, [m.role == "assistant" and m.train for m in msgs]

    def parse(self, ids: Sequence[int]) -> Conversation:
        s = "".join(v if k == "token" else self.escaper.escape(v) for k, v in self.split_control(ids))
        pos = 0
        if self.begin:
            if not s.startswith(self.begin):
                raise ProtocolError(f"{self.name}: sequence does not start with {self.begin}")
            pos = len(self.begin)
        messages = []
        while pos < len(s):
            m = self._turn.match(s, pos)
            if not m:
                raise ProtocolError(f"{self.name}: malformed sequence at character {pos}: {self.escaper.unescape(s[pos:pos + 60])!r}")
            role, content = m.group(1), self.escaper.unescape(m.group(2))
            tool_calls = None
            if role == "assistant":
                content, tool_calls = split_tool_calls(content)
            messages.append(Message(role, content, tool_calls=tool_calls))
            pos = m.end()
        if not messages:
            raise ProtocolError(f"{self.name}: no messages in the sequence")
        try:
            return Conversation(messages).validate()
        except ValidationError as e:
            raise ProtocolError(f"{self.name}: parsed conversation is not valid: {e}") from e

    @property
    def chat_template(self) -> str:
        """A Jinja chat template that renders exactly what this protocol renders (for exported model directories)."""
        head, tail = self.header.split("{role}")
        q = json.dumps  # Jinja string literals with escapes, e.g. '\n'
        return (
            (f"{{{{ {q(self.begin)} }}}}" if self.begin else "")
            + "{% for message in messages %}"
            + f"{{{{ {q(head)} + message['role'] + {q(tail)} }}}}"
            + "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
            + "{% if message['role'] == 'assistant' and message.get('tool_calls') %}{% for call in message['tool_calls'] %}"
            + f"{{{{ {q(TOOL_CALL_OPEN)} + (call | tojson) + {q(TOOL_CALL_CLOSE)} }}}}"
            + "{% endfor %}{% endif %}"
            + f"{{{{ {q(self.footer)} }}}}"
            + "{% endfor %}"
            + f"{{% if add_generation_prompt %}}{{{{ {q(head + 'assistant' + tail)} }}}}{{% endif %}}"
        )


class GPT4o(TurnProtocol):
    """`<|im_start|>{role}<|im_sep|>{content}<|im_end|>`, the format tiktokenizer shows for GPT-4o."""

    name = "gpt4o"
    control_tokens = ("<|im_start|>", "<|im_sep|>", "<|im_end|>")
    end_of_turn = "<|im_end|>"
    header = "<|im_start|>{role}<|im_sep|>"
    footer = "<|im_end|>"


class ChatML(TurnProtocol):
    """`<|im_start|>{role}\\n{content}<|im_end|>\\n`, Qwen2.5 / SmolLM2 style."""

    name = "chatml"
    control_tokens = ("<|im_start|>", "<|im_end|>")
    end_of_turn = "<|im_end|>"
    header = "<|im_start|>{role}\n"
    footer = "<|im_end|>\n"


class Llama3(TurnProtocol):
    """One `<|begin_of_text|>`, then `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`."""

    name = "llama3"
    control_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    end_of_turn = "<|eot_id|>"
    begin = "<|begin_of_text|>"
    header = "<|start_header_id|>{role}<|end_header_id|>\n\n"
    footer = "<|eot_id|>"


BUILTIN = {p.name: p for p in (GPT4o, ChatML, Llama3)}
