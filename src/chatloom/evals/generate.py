"""The one place evals generate text: greedy replies from a model directory through `chatloom.engine.Engine`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..conversation import Conversation


@dataclass
class Reply:
    text: str
    ids: list[int]
    finish_reason: str


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
        out += [Reply(c.text, list(c.ids), c.finish_reason) for c in engine.generate(list(chunk), params)]
        if on_batch:
            on_batch(len(chunk))
    return out
