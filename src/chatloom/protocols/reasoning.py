"""A generated reply split into its reasoning block and its content, as text streams in.

A model whose protocol renders reasoning (`Protocol.reasoning_tags`: the built-ins' and Qwen3's `<think>\\n` ...
`\\n</think>\\n\\n`) writes its reasoning block itself, right after the generation prompt. The server returns that block
as `reasoning_content` and the rest as `content` (the DeepSeek / vLLM convention), so that a client sending the reply
back gets it rendered exactly as the model wrote it.

The rule: a reply whose text starts with the opening tag (its non-whitespace core, `<think>`) has a reasoning block;
the reasoning is what lies between the opening tag and the first closing tag (`</think>`), without the whitespace the
template writes inside the tags (`\\n` after `<think>`, `\\n` before `</think>`); the content is what follows the
closing tag, without the whitespace the template writes after it (`\\n\\n`). A block never closed (the reply was cut by
`max_tokens`) is all reasoning. A reply that does not start with the tag has no reasoning (None). Streaming gives the
same split as the whole text, whatever the chunks: text that could still be part of a tag is held back until it cannot.
"""

from __future__ import annotations

_START, _REASONING, _AFTER, _CONTENT = range(4)


class ReasoningSplitter:
    """Push text deltas of one reply, get (reasoning delta, content delta) pairs; `finish()` flushes what was held."""

    def __init__(self, tags: tuple[str, str]):
        open_, close = tags
        self.open_core = open_.strip()
        self.open_tail = open_[open_.index(self.open_core) + len(self.open_core):]
        self.close_core = close.strip()
        at = close.index(self.close_core)
        self.close_head, self.close_tail = close[:at], close[at + len(self.close_core):]
        self.state = _START
        self.buf = ""
        self.skip_open_tail = False
        self.reasoning: str | None = None  # all reasoning so far (None: no block)
        self.content = ""

    def push(self, text: str) -> tuple[str, str]:
        self.buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, str]:
        r_out, c_out = [], []
        while True:
            buf = self.buf
            if self.state == _START:
                if buf.startswith(self.open_core):
                    self.state, self.buf, self.reasoning, self.skip_open_tail = _REASONING, buf[len(self.open_core):], "", True
                    continue
                if self.open_core.startswith(buf) and not final:
                    break  # may still become the tag
                self.state = _CONTENT
                continue
            if self.state == _REASONING:
                if self.skip_open_tail:  # the template's whitespace after the opening tag
                    if buf.startswith(self.open_tail):
                        self.buf = buf = buf[len(self.open_tail):]
                        self.skip_open_tail = False
                    elif self.open_tail.startswith(buf) and not final:
                        break
                    else:
                        self.skip_open_tail = False
                at = buf.find(self.close_core)
                if at >= 0:
                    # what precedes the tag is still held here (the hold below is longer than the head)
                    r_out.append(buf[:at].removesuffix(self.close_head))
                    self.state, self.buf = _AFTER, buf[at + len(self.close_core):]
                    continue
                keep = 0 if final else min(len(buf), len(self.close_head) + len(self.close_core) - 1)
                r_out.append(buf[: len(buf) - keep])
                self.buf = buf[len(buf) - keep:]
                break
            if self.state == _AFTER:  # the template's whitespace after the closing tag
                if buf.startswith(self.close_tail):
                    self.buf = buf[len(self.close_tail):]
                elif self.close_tail.startswith(buf) and not final:
                    break
                self.state = _CONTENT
                continue
            c_out.append(buf)
            self.buf = ""
            break
        r, c = "".join(r_out), "".join(c_out)
        if r:
            self.reasoning = (self.reasoning or "") + r
        self.content += c
        return r, c


def split_reasoning(text: str, tags: tuple[str, str] | None) -> tuple[str | None, str]:
    """(reasoning or None, content) of a whole reply; `tags` None (a protocol without reasoning): (None, text)."""
    if not tags:
        return None, text
    s = ReasoningSplitter(tags)
    s.push(text)
    s.finish()
    return s.reasoning, s.content
