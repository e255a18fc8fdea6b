"""Sizing the quickstart to a wall-clock budget on the machine it runs on.

One optimizer step of the chosen config is timed on random tokens (with the same precision the training loop picks);
each stage then gets `seconds // step_time` steps, clamped to a sensible range. A fast machine trains longer (up to the
cap), a slow or busy one trains less but still finishes on time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Plan:
    step_seconds: float
    pretrain_steps: int
    sft_steps: int

    def as_dict(self) -> dict:
        return {"step_seconds": round(self.step_seconds, 3), "pretrain_steps": self.pretrain_steps,
                "sft_steps": self.sft_steps}


def time_one_step(config: str, seq_len: int, batch_size: int, repeats: int = 2) -> float:
    """Seconds per optimizer step of `config` on a [batch_size, seq_len] batch (best of `repeats` after a warm-up)."""
    from ..tokenizers import load_tokenizer
    from ..train.loop import bf16_supported
    from ..train.models import BUNDLED_TOKENIZER, build_model

    vocab = len(load_tokenizer(BUNDLED_TOKENIZER)) + 2
    model = build_model(config, vocab, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch_size, seq_len))
    use_bf16 = bf16_supported(torch.device("cpu"))
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def plan(train_seconds: float, step_seconds: float, pretrain_share: float = 0.3, min_steps: int = 20,
         max_pretrain: int = 400, max_sft: int = 500) -> Plan:
    total = max(2 * min_steps, int(train_seconds / step_seconds))
    pre = min(max_pretrain, max(min_steps, int(total * pretrain_share)))
    sft = min(max_sft, max(min_steps, total - pre))
    return Plan(step_seconds, pre, sft)
