"""Sizing the quickstart to a wall-clock budget on the machine it runs on.

One optimizer step of each stage's shape (pretraining rows, SFT rows) is timed on random tokens with the precision
the training loop picks. The budget, less a fixed reserve for loading, evaluation and the report, is split between the
stages by seconds, and each stage gets `seconds // its step time` steps, clamped to a sensible range: a fast machine
trains longer (up to the caps), a slow or busy one trains less but still finishes on time. Pretraining gets the larger
share because the base has to learn its arithmetic facts there; SFT converges in fewer, cheaper steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

RESERVE_SECONDS = 100  # step timing, corpus, loading, evaluation of two models, the report (measured ~40-80 s here)
SAFETY = 0.95  # what is left over is finishing early
# A real step runs slower than the timed one (real data, logging, a warm machine): measured here over four fresh runs,
# pretraining 1.14-1.17x and SFT 1.0-1.32x the timed step; the plan counts with the slow end of each.
PRETRAIN_SLOWDOWN = 1.17
SFT_SLOWDOWN = 1.3


@dataclass
class Plan:
    step_seconds: float
    pretrain_steps: int
    sft_steps: int
    sft_step_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"step_seconds": round(self.step_seconds, 3), "sft_step_seconds": round(self.sft_step_seconds, 3),
                "pretrain_steps": self.pretrain_steps, "sft_steps": self.sft_steps}


def time_one_step(config: str, seq_len: int, batch_size: int, repeats: int = 5, warmup: int = 2) -> float:
    """Seconds per optimizer step of `config` on a [batch_size, seq_len] batch of random tokens, through the training
    loop's own loss and attention (best of `repeats` after `warmup` steps: on a fresh install the first steps can take
    twice as long, and a budget sized on them halves the base)."""
    from ..tokenizers import load_tokenizer
    from ..train.attention import use_training_attention
    from ..train.loop import SupervisedLoss, bf16_supported
    from ..train.models import BUNDLED_TOKENIZER, build_model

    vocab = len(load_tokenizer(BUNDLED_TOKENIZER)) + 2
    model = build_model(config, vocab, seed=0)
    use_training_attention(model)
    loss_of = SupervisedLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    ids = torch.randint(0, vocab, (batch_size, seq_len))
    positions = torch.arange(seq_len).repeat(batch_size, 1)
    segments = torch.zeros_like(ids)
    use_bf16 = bf16_supported(torch.device("cpu"))
    best = float("inf")
    for i in range(warmup + repeats):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_of(ids, positions, segments, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            best = min(best, time.perf_counter() - start)
    return best


def training_seconds(minutes: float) -> float:
    """The part of a `minutes` budget that the two training stages may spend."""
    return max(0.0, minutes * 60 - RESERVE_SECONDS) * SAFETY


def plan(train_seconds: float, step_seconds: float, sft_step_seconds: float | None = None, pretrain_share: float = 0.6,
         min_steps: int = 20, max_pretrain: int = 800, max_sft: int = 1200) -> Plan:
    """Steps per stage for `train_seconds` of training, from the timed steps (`sft_step_seconds` defaults to the
    pretraining step's time) and the slowdown of real steps against timed ones."""
    sft_step_seconds = sft_step_seconds or step_seconds
    pre_real, sft_real = step_seconds * PRETRAIN_SLOWDOWN, sft_step_seconds * SFT_SLOWDOWN
    pre = min(max_pretrain, max(min_steps, int(train_seconds * pretrain_share / pre_real)))
    left = max(0.0, train_seconds - pre * pre_real)
    sft = min(max_sft, max(min_steps, int(left / sft_real)))
    return Plan(step_seconds, pre, sft, sft_step_seconds)
