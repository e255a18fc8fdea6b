"""Held-out loss on supervised tokens: the model's cross-entropy on exactly the tokens SFT trains (assistant content
plus its end-of-turn token, per `protocol.render`'s mask), summed over the set and divided by their count.

It is computed by the training code itself, so evaluation and training cannot disagree about which tokens count:
`train.data.conversation_examples` (render, truncation that never cuts a supervised run off its end, shifted targets
with -100 elsewhere), `train.data.pack` (rows without cross-attention between conversations) and
`train.loop.SupervisedLoss` (the summed cross-entropy over supervised positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..conversation import Conversation


@torch.no_grad()
def supervised_loss(model, protocol, convs: Sequence[Conversation], batch_size: int = 16, max_len: int = 1024) -> dict:
    """{"loss": mean nats per supervised token, "ppl": exp(loss), "tokens": supervised tokens counted,
    "skipped": conversations without a supervised token (after truncation to `max_len`)}; `batch_size` packed rows
    go through the model at a time."""
    from ..train.data import DataStats, conversation_examples, pack
    from ..train.loop import SupervisedLoss

    model.eval()
    stats = DataStats()
    examples = conversation_examples(list(convs), protocol, max_len, stats)
    total = 0.0
    if examples:
        seq_len = max(len(e.ids) for e in examples)
        shard = pack(examples, seq_len, protocol.end_of_turn_id)
        loss_of = SupervisedLoss(model)
        device = next(model.parameters()).device
        for start in range(0, len(shard), batch_size):
            b = shard.batch(range(start, min(start + batch_size, len(shard))), device)
            total += loss_of(b["ids"], b["positions"], b["segments"], b["targets"]).float().item()
    count = stats.supervised_tokens
    loss = total / count if count else float("nan")
    return {"loss": loss, "ppl": math.exp(loss) if count and loss < 50 else float("inf"), "tokens": count,
            "skipped": stats.skipped_no_supervised}
