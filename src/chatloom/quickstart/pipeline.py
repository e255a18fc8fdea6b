"""`chatloom quickstart`: the whole story in one run, on the embedded default, without a download or a GPU.

base (pretrained here on the stdlib's prose and arithmetic drill sheets, cached; or the user's `--model`) -> SFT on the
embedded conversation set, with a slice of the base's corpus replayed so it keeps its facts -> evaluation of both on the
held-out set (every rate with its 95% interval; base vs SFT by a paired test) and the imitation analysis of the SFT model
(its answers against the nearest training answers) -> `report.html` -> the commands to chat with and serve the result.
The step counts are sized to `minutes` on this machine (see `budget.py`); `tiny=True` shrinks everything for tests.
`seed` fixes every random choice of both training stages (initial weights, row order); the data and the held-out
probes are the same for every seed, so runs with different seeds measure how much the bars move by chance.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..conversation import Conversation, load
from . import budget
from .dataset import HELDOUT_PATH, TRAIN_PATH

console = Console()
DOCUMENT_PROMPTS = ["The Python standard library", "Return the number of", "This module provides"]


@dataclass
class Settings:
    config: str = "small"
    seq_len: int = 256
    batch_size: int = 16
    sft_batch_size: int = 8  # the conversation set is small: more, smaller steps learn more in the same time
    pretrain_lr: float = 2e-3
    sft_lr: float = 3e-4
    # the base's input embeddings stay as pretraining left them: SFT decides from what the layers make of the words
    sft_freeze_embeddings: bool = True
    sft_neftune: float = 5.0  # NEFTune noise on SFT's input embeddings (TrainConfig.neftune_alpha)
    max_tokens: int = 64  # the held-out references are up to 37 tokens: a lower limit cuts right answers short
    heldout_limit: int = 0  # 0: the whole held-out set
    train_limit: int = 0  # 0: the whole training set
    fixed_plan: budget.Plan | None = None
    corpus_chars: int | None = None  # None: the whole stdlib corpus
    replay_every: int = 12  # SFT also sees every N-th document of the base's corpus (0: no replay)
    imitation_sample: int = 100  # training prompts the imitation analysis asks the SFT model again

    @classmethod
    def tiny(cls) -> Settings:
        return cls(config="tiny", seq_len=128, batch_size=8, sft_batch_size=8, pretrain_lr=3e-3, sft_lr=3e-3, max_tokens=64,
                   heldout_limit=30, train_limit=400, fixed_plan=budget.Plan(0.0, 8, 150), corpus_chars=200_000,
                   replay_every=0, imitation_sample=20)


@dataclass
class QuickstartResult:
    out: Path
    base_dir: Path
    sft_dir: Path
    report: Path
    reports: list[dict]
    timings: dict[str, float] = field(default_factory=dict)
    plan: dict = field(default_factory=dict)


def stage(n: int, title: str):
    console.rule(f"[bold]{n}/5 · {title}")


def run(out: str | Path = "runs/quickstart", model: str | None = None, minutes: float = 15.0, tiny: bool = False,
        protocol: str = "chatml", seed: int = 0) -> QuickstartResult:
    from ..evals import compare, evaluate, imitation_table, metrics_table
    from ..evals.generate import load_engine
    from ..evals.imitation import analyse, heldout_pairs
    from ..train import TrainConfig, train
    from .base import bring_base, ensure_base, replay_corpus
    from .report import write_report

    tiny = tiny or os.environ.get("CHATLOOM_QUICKSTART_TINY") == "1"
    s = Settings.tiny() if tiny else Settings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    stage(1, "time budget")
    plan = s.fixed_plan
    if plan is not None and model:  # no pretraining: SFT of the user's base gets all the training seconds
        plan.pretrain_steps, plan.pretrain_seconds = 0, 0.0
    elif plan is None and model:
        console.print("sized on your model once it is loaded (stage 2)")
    elif plan is None:
        step = budget.time_one_step(s.config, s.seq_len, s.batch_size)
        sft_step = budget.time_one_step(s.config, s.seq_len, s.sft_batch_size)
        plan = budget.plan(budget.training_seconds(minutes), step, sft_step)
        console.print(f"one step of {s.config!r} takes {plan.step_seconds:.2f}s here ({plan.sft_step_seconds:.2f}s at the "
                      f"SFT batch) -> pretrain {plan.pretrain_steps} steps, SFT {plan.sft_steps} steps (budget "
                      f"{minutes:g} min; at most {plan.pretrain_seconds:.0f} s + {plan.sft_seconds:.0f} s of training)")
    timings["budget"] = time.perf_counter() - started

    stage(2, "base model")
    t = time.perf_counter()
    heldout = list(load(HELDOUT_PATH))
    if s.heldout_limit:
        heldout = spread(heldout, s.heldout_limit)
    if model:
        console.print(f"bringing your base model {model}")
        base_dir = bring_base(model, out / "base", protocol=protocol)
        if plan is None:
            plan = size_brought(base_dir, minutes * 60 - (time.perf_counter() - started), s, heldout)
    else:
        base_dir, _ = ensure_base(s.config, plan.pretrain_steps, protocol=protocol, seq_len=s.seq_len,
                                  batch_size=s.batch_size, lr=s.pretrain_lr, tag="tiny" if tiny else "",
                                  corpus_chars=s.corpus_chars, max_seconds=plan.pretrain_seconds, seed=seed,
                                  log=console.print)
    timings["base"] = time.perf_counter() - t

    stage(3, "supervised fine-tuning on the embedded conversations")
    t = time.perf_counter()
    data = TRAIN_PATH
    if s.train_limit:
        from ..conversation import save

        data = out / "train-subset.jsonl"
        save(list(load(TRAIN_PATH))[:s.train_limit], data)
    sft_dir = out / "sft"
    replay = [str(replay_corpus(s.replay_every))] if s.replay_every and not model else []  # against forgetting
    train(TrainConfig(out=str(sft_dir), mode="sft", model=str(base_dir), data=[str(data)], text=replay, protocol=protocol,
                      max_steps=plan.sft_steps, max_seconds=plan.sft_seconds, seq_len=s.seq_len, batch_size=s.sft_batch_size,
                      lr=s.sft_lr if not model else 1e-4, neftune_alpha=s.sft_neftune if not model else 0.0,
                      freeze_embeddings=s.sft_freeze_embeddings and not model,
                      warmup_steps=max(1, plan.sft_steps // 20), seed=seed))
    timings["sft"] = time.perf_counter() - t

    stage(4, "evaluation on the held-out set")
    t = time.perf_counter()
    reports, continuations = [], {}
    for label, model_dir in (("base", base_dir), ("sft", sft_dir)):
        engine = load_engine(model_dir)
        reports.append(evaluate(model_dir, heldout, max_tokens=s.max_tokens, engine=engine, label=label))
        continuations[label] = continue_documents(engine, DOCUMENT_PROMPTS, max_new_tokens=s.max_tokens // 2)
    reports[1]["comparison"] = compare(reports[0], reports[1])  # paired: is each difference beyond noise?
    timings["eval"] = time.perf_counter() - t
    console.print(metrics_table(reports, title="held-out set: base vs SFT"))
    t = time.perf_counter()  # what the SFT model copied from its training answers (engine: the SFT model's)
    reports[1]["imitation"] = analyse(engine, data, heldout_pairs(reports[1]), n_train=s.imitation_sample,
                                      max_tokens=s.max_tokens)
    timings["imitation"] = time.perf_counter() - t
    console.print(imitation_table(reports[1]["imitation"], title="imitation: the SFT model against its training answers"))

    stage(5, "report")
    timings["total"] = time.perf_counter() - started
    (out / "eval.json").write_text(json.dumps(reports, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    report = write_report(out / "report.html", reports=reports, base_dir=base_dir, sft_dir=sft_dir,
                          continuations=continuations, timings=timings, plan=plan.as_dict(), protocol=protocol, seed=seed)
    console.print(f"wrote {report} and {out / 'eval.json'}  (total {timings['total'] / 60:.1f} min)")
    console.print("\nTalk to your model:")
    console.print(f"  chatloom chat --model {sft_dir}", highlight=False)
    console.print(f"  chatloom serve --model {sft_dir} --port 8000   # OpenAI-compatible API at http://127.0.0.1:8000/v1",
                  highlight=False)
    console.print(f"  chatloom eval --model {sft_dir} --compare {base_dir} --html {out / 'eval.html'}", highlight=False)
    return QuickstartResult(out, base_dir, sft_dir, report, reports, timings, plan.as_dict())


def size_brought(base_dir: Path, seconds_left: float, s: Settings, heldout: list) -> budget.Plan:
    """The plan for a brought model, timed on it: one SFT step, and one batch of replies to price the evaluation (the
    base and the SFT model answer every held-out probe, the SFT model also `imitation_sample` training prompts)."""
    import math

    from ..evals.generate import load_engine

    engine = load_engine(base_dir)
    batch = 32
    prompts = [Conversation(c.messages[:-1]) for c in heldout[:batch]]
    per_batch = budget.time_generation(engine, prompts, s.max_tokens, batch)
    batches = 2 * math.ceil(len(heldout) / batch) + math.ceil(s.imitation_sample / batch) + 1  # + the documents
    step = budget.time_step(engine.model, len(engine.tokenizer), s.seq_len, s.sft_batch_size, repeats=2, warmup=1,
                            supervised=budget.SFT_SUPERVISED)
    del engine
    plan = budget.brought_plan(seconds_left, step, per_batch * batches)
    console.print(f"one SFT step of your model takes {step:.2f}s here, a batch of {batch} replies {per_batch:.1f}s -> "
                  f"evaluation ~{per_batch * batches / 60:.1f} min; SFT {plan.sft_steps} steps (at most "
                  f"{plan.sft_seconds:.0f} s of training, of {seconds_left:.0f} s left)")
    return plan


def spread(items: list, n: int) -> list:
    """`n` items taken evenly across the list (so every probe kind is represented in a tiny run)."""
    by_kind: dict[str, list] = {}
    for c in items:
        by_kind.setdefault((c.meta.get("probe") or {}).get("kind", ""), []).append(c)
    out, i = [], 0
    while len(out) < min(n, len(items)):
        for group in by_kind.values():
            if i < len(group) and len(out) < n:
                out.append(group[i])
        i += 1
    return out


def continue_documents(engine, prompts: list[str], max_new_tokens: int = 32) -> list[tuple[str, str]]:
    """Greedy continuation of raw text (no protocol): what a base model does with a document."""
    import torch

    tok, out = engine.tokenizer, []
    for prompt in prompts:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            gen = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                        do_sample=False, pad_token_id=engine.protocol.end_of_turn_id)
        out.append((prompt, tok.decode(gen[0, ids.shape[1]:].tolist())))
    return out
