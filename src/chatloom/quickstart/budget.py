"""Sizing the quickstart to a wall-clock budget on the machine it runs on.

One optimizer step of each stage's shape (pretraining rows, SFT rows) is timed on random tokens with the precision
the training loop picks. The budget, less a fixed reserve for loading, evaluation and the report, is split between the
stages by seconds, and each stage gets `seconds // its step time` steps, clamped to a sensible range: a fast machine
trains longer (up to the caps), a slow or busy one trains less. Each stage also gets its seconds as a hard limit
(`TrainConfig.max_seconds`): if the machine slows down after the timing, the stage stops on time with its learning-rate
schedule run to the end by the clock, instead of overrunning the budget. Pretraining gets the larger share (65%) because
the base has to learn its arithmetic facts there (fresh runs with 531-571 pretraining steps fell to 67-69% on the
arithmetic bar, the same seed with 764 steps 89%); SFT converges in fewer, cheaper steps.

A brought model (`quickstart --model`) is sized on itself, once it is loaded: one SFT step of it is timed, and so is
its generation, because evaluating a 270M model with a 262k vocabulary on the held-out set takes minutes where the
built-in model takes seconds; SFT gets what the budget leaves after that evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

RESERVE_SECONDS = 85  # step timing, corpus, loading, the export's parity checks, evaluation of two models on the
# 411 held-out probes, the imitation sample, the report: 60-69 s of the three fresh runs of 2026-12-04 (wall 802-807 s
# of which 733-747 s trained); the rest of the budget is better spent pretraining (see `plan`)
SAFETY = 0.97  # what is left over is finishing early
# A real step against the timed one (the same loss and attention; real SFT rows supervise only the assistant turns):
# measured on a fresh run here, pretraining 1.01x and SFT 0.83x.
PRETRAIN_SLOWDOWN = 1.02
SFT_SLOWDOWN = 0.85
# a brought model: seconds of the run that are neither SFT nor generation (data and model loading, the export and
# its parity check, the report)
BROUGHT_OVERHEAD = 60
# the share of an SFT row's tokens the quickstart's conversations supervise (Gemma 3 270M's rows: 865-917 of ~2,000)
SFT_SUPERVISED = 0.45
# a brought model's SFT stops by the clock; its step count only caps it, so it errs high (a timed step can be slower
# than the real ones: Gemma 3 270M timed 13-18 s, ran 9-10 s)
STEP_MARGIN = 1.5


@dataclass
class Plan:
    step_seconds: float
    pretrain_steps: int
    sft_steps: int
    sft_step_seconds: float = 0.0
    pretrain_seconds: float = 0.0  # the stage's hard time limit (0: none)
    sft_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"step_seconds": round(self.step_seconds, 3), "sft_step_seconds": round(self.sft_step_seconds, 3),
                "pretrain_steps": self.pretrain_steps, "sft_steps": self.sft_steps,
                "pretrain_seconds": round(self.pretrain_seconds, 1), "sft_seconds": round(self.sft_seconds, 1)}


def time_one_step(config: str, seq_len: int, batch_size: int, repeats: int = 5, warmup: int = 2) -> float:
    """Seconds per optimizer step of the named `config` on a [batch_size, seq_len] batch of random tokens (see
    `time_step`)."""
    from ..tokenizers import load_tokenizer
    from ..train.models import build_model

    vocab = len(load_tokenizer(None)) + 2  # chatloom's bundled BPE
    return time_step(build_model(config, vocab, seed=0), vocab, seq_len, batch_size, repeats, warmup)


def time_step(model, vocab: int, seq_len: int, batch_size: int, repeats: int = 5, warmup: int = 2,
              supervised: float = 1.0) -> float:
    """Seconds per optimizer step of `model` on a [batch_size, seq_len] batch of random tokens, through the training
    loop's own loss and attention (best of `repeats` after `warmup` steps: on a fresh install the first steps can take
    twice as long, and a budget sized on them halves the base). `supervised`: the share of each row's tokens the loss
    covers (the rest, at the start of the row, is prompt), which sets the output head's cost: most of a step at a
    262k vocabulary. The model's weights are left changed."""
    from ..train.attention import use_training_attention
    from ..train.data import IGNORE
    from ..train.fused_loss import Workspace
    from ..train.heap import keep_freed_memory
    from ..train.loop import SupervisedLoss, adamw, bf16_supported, clipped_step
    from ..train.tied_embedding import tie_gradient, untie_gradient

    use_training_attention(model)
    model.train()
    use_bf16 = bf16_supported(torch.device("cpu"))
    workspace = Workspace() if use_bf16 else None
    loss_of = SupervisedLoss(model, handoff=tie_gradient(model), workspace=workspace)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, torch.device("cpu"), lr=1e-4)
    ids = torch.randint(0, vocab, (batch_size, seq_len))
    positions = torch.arange(seq_len).repeat(batch_size, 1)
    segments = torch.zeros_like(ids)
    targets = ids.clone()
    targets[:, :seq_len - max(1, round(seq_len * supervised))] = IGNORE
    best = float("inf")
    with keep_freed_memory(large=not use_bf16):  # as the loop trains
        for i in range(warmup + repeats):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_of(ids, positions, segments, targets)
            loss.backward()
            clipped_step(opt, params, 1.0)
            if workspace is not None:
                workspace.recycle(model.get_output_embeddings().weight)
            opt.zero_grad(set_to_none=True)
            if i >= warmup:
                best = min(best, time.perf_counter() - start)
    untie_gradient(model)
    return best


SHORT, LONG = 4, 12  # new tokens of the two timed generation batches


def time_generation(engine, prompts: list, max_tokens: int, batch_size: int = 32) -> float:
    """Seconds one batch of `batch_size` greedy replies of `max_tokens` tokens takes with `engine`, from short timed
    batches after a warm-up (best of two at 4 and at 12 new tokens), so a brought model's evaluation is priced before
    its training is sized."""
    from ..evals.generate import generate

    batch = (list(prompts) * batch_size)[:batch_size]
    generate(engine, batch, max_tokens=2, batch_size=batch_size)  # the first call pays for warming up
    seconds = {}
    for n in (SHORT, LONG):
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            generate(engine, batch, max_tokens=n, batch_size=batch_size)
            best = min(best, time.perf_counter() - start)
        seconds[n] = best
    return batch_seconds(seconds[SHORT], seconds[LONG], max_tokens)


def batch_seconds(short_seconds: float, long_seconds: float, max_tokens: int) -> float:
    """A batch of `max_tokens`-token replies from batches of `SHORT` and `LONG` tokens: their difference is the cost
    per token, the rest the prompt's (prefill)."""
    per_token = max(0.0, long_seconds - short_seconds) / (LONG - SHORT)
    return max(short_seconds - SHORT * per_token, 0.0) + max_tokens * per_token


def training_seconds(minutes: float) -> float:
    """The part of a `minutes` budget that the two training stages may spend."""
    return max(0.0, minutes * 60 - RESERVE_SECONDS) * SAFETY


def plan(train_seconds: float, step_seconds: float, sft_step_seconds: float | None = None, pretrain_share: float = 0.65,
         min_steps: int = 20, max_pretrain: int = 1000, max_sft: int = 1500) -> Plan:
    """Steps and seconds per stage for `train_seconds` of training, from the timed steps (`sft_step_seconds` defaults
    to the pretraining step's time) and the ratio of real steps to timed ones. Seconds a capped pretraining does not
    use go to SFT."""
    sft_step_seconds = sft_step_seconds or step_seconds
    pre_real, sft_real = step_seconds * PRETRAIN_SLOWDOWN, sft_step_seconds * SFT_SLOWDOWN
    pre_seconds = train_seconds * pretrain_share
    pre = min(max_pretrain, max(min_steps, int(pre_seconds / pre_real)))
    pre_seconds = min(pre_seconds, pre * pre_real) if pre == max_pretrain else pre_seconds
    sft_seconds = max(0.0, train_seconds - pre_seconds)
    sft = min(max_sft, max(min_steps, int(sft_seconds / sft_real)))
    return Plan(step_seconds, pre, sft, sft_step_seconds, pre_seconds, sft_seconds)


def brought_plan(seconds_left: float, step_seconds: float, eval_seconds: float, max_sft: int = 1500,
                 min_steps: int = 5) -> Plan:
    """SFT steps and seconds for a brought model (no pretraining): what is left of the budget after its evaluation
    (priced with `time_generation`) and a fixed `BROUGHT_OVERHEAD` (loading, export, parity check, report)."""
    seconds = max(0.0, seconds_left - eval_seconds - BROUGHT_OVERHEAD) * SAFETY
    steps = min(max_sft, max(min_steps, int(seconds / step_seconds * STEP_MARGIN)))
    return Plan(step_seconds, 0, steps, step_seconds, 0.0, seconds)
