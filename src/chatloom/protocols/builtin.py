"""The built-in formats, declared as strings: gpt4o, chatml and llama3 (DESIGN §2).

Each format is a header (with `{role}`), a footer whose first token ends the turn, and optionally a token placed once at
the start. From that declaration come the layout (what the encoder turns into ids and mask), the parser (a regex over the escaped string)
and a Jinja chat template equal to the protocol, which an exported model directory carries so that transformers, vLLM
and llama.cpp apply the same format.

Reasoning: an assistant message's `reasoning_content` is rendered before its content as
`<think>\\n{reasoning}\\n</think>\\n\\n{content}` (the Qwen3 / DeepSeek-R1 convention), in every built-in format, and
parsed back from a reply that starts with such a block. Everything after the generation prompt is what the model
writes, so a trained turn supervises `<think>\\n`, the reasoning, `\\n</think>\\n\\n`, the content and the
end-of-turn token; with `train_reasoning` off the reasoning text itself is not supervised, its tags still are (the model
still learns to open and close the block; encoder.py's "framed" gaps). A message without `reasoning_content` has no
block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..conversation import Conversation, Message, ValidationError
from .base import Protocol, ProtocolError
from .encoder import Layout
from .escape import Escaper

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "\n<tool_call>\n", "\n</tool_call>"
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"
_THINK = re.compile(re.escape(THINK_OPEN) + "(.*?)" + re.escape(THINK_CLOSE), re.S)
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
    """A format where every message is `header(role) + content + footer`; an assistant message with reasoning is
    `header + "<think>\\n" + reasoning + "\\n</think>\\n\\n" + content + footer`, all of it after the header
    supervised (the reasoning text only with `train_reasoning`; see the module doc)."""

    begin: str = ""
    header: str = ""
    footer: str = ""
    reasoning_tags = (THINK_OPEN, THINK_CLOSE)

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.bos_tokens = (self.begin,) if self.begin else ()
        self.escaper = Escaper(self.control_tokens)
        self._heads = {r: self.header.replace("{role}", r) for r in ("system", "user", "assistant", "tool")}
        self._between = {r: self.footer + h for r, h in self._heads.items()}  # closes one turn, opens one of role r
        footer = self.escaper.split(self.footer)
        if not footer or footer[0][:2] != ("token", self.end_of_turn):
            raise ProtocolError(f"{self.name}: the footer must start with the end-of-turn token")
        pattern = re.escape(self.header).replace(re.escape("{role}"), "(system|user|assistant|tool)")
        self._turn = re.compile(pattern + "(.*?)" + re.escape(self.footer), re.S)

    def layout(self, conv: Conversation, add_generation_prompt: bool = False) -> Layout:
        msgs = conv.messages
        heads = self._heads
        gaps, contents, trained = [], [], []
        between = self._between
        for m in msgs:
            if m.reasoning_content is not None:
                break
            gaps.append(between[m.role])
            if m.role == "assistant":
                contents.append(m.content if not m.tool_calls else assistant_text(m))
                trained.append(m.train)
            else:
                contents.append(m.content)
                trained.append(False)
        else:
            gaps[0] = self.begin + heads[msgs[0].role]
            gaps.append(self.footer + (heads["assistant"] if add_generation_prompt else ""))
            return Layout(gaps, contents, trained)
        gaps, contents, trained, owners, framed = [], [], [], [], []
        lead = self.begin
        for i, m in enumerate(msgs):
            sup = m.role == "assistant" and m.train
            lead += heads[m.role]
            inner = m.reasoning_content is not None
            if inner:  # the generation prompt ends here (an empty content); the block's tags are framed gaps
                gaps += [lead, THINK_OPEN]
                framed += [False, sup]
                contents += ["", m.reasoning_content]
                trained += [sup, sup and self.train_reasoning]
                owners += [i, i]
                lead = THINK_CLOSE
            gaps.append(lead)
            framed.append(inner and sup)
            contents.append(assistant_text(m) if m.role == "assistant" else m.content)
            trained.append(sup)
            owners.append(i)
            lead = self.footer
        gaps.append(self.footer + (heads["assistant"] if add_generation_prompt else ""))
        framed.append(False)
        return Layout(gaps, contents, trained, owners=owners, framed=framed)

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
            tool_calls = reasoning = None
            if role == "assistant":
                think = _THINK.match(content)
                if think:
                    reasoning, content = think.group(1), content[think.end():]
                content, tool_calls = split_tool_calls(content)
            messages.append(Message(role, content, tool_calls=tool_calls, reasoning_content=reasoning))
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
            + "{% if message['role'] == 'assistant' and message.get('reasoning_content') is not none %}"
            + f"{{{{ {q(THINK_OPEN)} + message['reasoning_content'] + {q(THINK_CLOSE)} }}}}{{% endif %}}"
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
