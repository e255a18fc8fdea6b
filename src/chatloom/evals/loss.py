"""Held-out loss on supervised tokens: the model's cross-entropy on exactly the tokens SFT trains (assistant content
plus its end-of-turn token, per `protocol.render`'s mask), summed over the set and divided by their count."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..conversation import Conversation


@torch.no_grad()
def supervised_loss(model, protocol, convs: Sequence[Conversation], batch_size: int = 16, max_len: int = 1024) -> dict:
    """{"loss": mean nats per supervised token, "ppl": exp(loss), "tokens": supervised tokens counted}."""
    model.eval()
    rendered = [r for r in protocol.render_batch(list(convs)) if r.num_supervised]
    total, count = 0.0, 0
    pad = protocol.end_of_turn_id
    for start in range(0, len(rendered), batch_size):
        chunk = rendered[start:start + batch_size]
        width = min(max(len(r.ids) for r in chunk), max_len)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, r in enumerate(chunk):
            n = min(len(r.ids), width)
            ids[row, :n] = torch.tensor(r.ids[:n])
            attn[row, :n] = 1
            mask = torch.tensor(r.mask[1:n], dtype=torch.bool)
            targets[row, :n - 1] = torch.where(mask, ids[row, 1:n], torch.full_like(ids[row, 1:n], -100))
        logits = model(input_ids=ids, attention_mask=attn).logits.float()
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                   ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    loss = total / count if count else float("nan")
    return {"loss": loss, "ppl": math.exp(loss) if count and loss < 50 else float("inf"), "tokens": count}
