"""The one place evals generate text: greedy replies from a model directory through `chatloom.engine.Engine`.

A reply of a model that writes a reasoning block (`<think>...</think>`, its protocol's `reasoning_tags`) is judged on
its `content` only: the block is split off as the server and `Completion.to_message` do, so a refusal or an identity
answer that only appears in the reasoning does not count. Adherence still looks at everything generated (`text`, `ids`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..conversation import Conversation


@dataclass
class Reply:
    text: str  # everything generated (a reasoning block included), without the end-of-turn token
    ids: list[int]
    finish_reason: str
    content: str  # what is judged: `text` without its reasoning block
    reasoning: str | None = None  # the reasoning block's text (None: the reply has none)


def load_engine(model_dir, protocol=None, quantize: str | None = None):
    """The engine that generates the replies; `quantize` ("int8", "int4"; None or "none": the saved weights) sets the
    precision of generation only (losses are computed with the float weights)."""
    from ..engine import Engine

    return Engine.from_pretrained(model_dir, protocol=protocol, quantize=None if quantize == "none" else quantize)


def generate(engine, prompts: Sequence[Conversation], max_tokens: int = 64, batch_size: int = 32,
             on_batch: Callable[[int], None] | None = None) -> list[Reply]:
    """Greedy replies to each conversation (which ends with a user turn), in batches; `on_batch(n)` reports progress."""
    from ..engine import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    out: list[Reply] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        for c in engine.generate(list(chunk), params):
            reasoning, content = c.split()
            out.append(Reply(c.text, list(c.ids), c.finish_reason, content, reasoning))
        if on_batch:
            on_batch(len(chunk))
    return out
