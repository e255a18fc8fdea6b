"""The synth run: plan each conversation from (run seed, index), play user simulator against assistant, filter, append.

Everything random about conversation `index` (seed topic, persona, opening style, number of turns, follow-up moves)
comes from a generator seeded with (run seed, index), and the sampling seeds sent to the endpoints also depend on the
attempt number, so a filtered conversation is retried with new samples but the same plan. Workers (`concurrency` of
them) pull indices still missing from the output, so a restarted run continues exactly where the last one stopped.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..conversation import Conversation
from .endpoints import ChatEndpoint, EndpointError, ModelSpec, RetryPolicy, Sampling, Usage
from .filters import FilterConfig, Rejection, check, check_turn
from .prompts import (
    DEFAULT_PERSONAS,
    FOLLOWUP_MOVES,
    OPENING_STYLES,
    Seed,
    clean_user_text,
    followup_request,
    opening_request,
)
from .store import AppendOnlyJsonl, recover, sidecar, synth_id, write_json_atomic

SUMMARY_EVERY_SECONDS = 5.0
MAX_LISTED = 1000  # indices listed in the summary (counts are always complete)


@dataclass
class SynthConfig:
    """One synth run. `out` is append-only; the summary and rejects files are written next to it."""

    seeds: Sequence[Seed]
    user_model: ModelSpec
    assistant_model: ModelSpec
    n: int
    out: Path
    turns: tuple[int, int] = (2, 4)
    concurrency: int = 8
    system: str | None = None
    personas: Sequence[str] = DEFAULT_PERSONAS
    seed: int = 0
    user_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=1.0, top_p=1.0, max_tokens=256))
    assistant_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=1.0, max_tokens=1024))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    filters: FilterConfig = field(default_factory=FilterConfig)
    max_attempts: int = 3
    verbatim_questions: bool = False  # seed questions open the conversation as written (no rephrasing)
    user_price: tuple[float, float] | None = None  # USD per million (input, output) tokens
    assistant_price: tuple[float, float] | None = None
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        lo, hi = self.turns
        if not 1 <= lo <= hi:
            raise ValueError(f"turns: need 1 <= min <= max, got {lo}-{hi}")
        if self.n < 0 or self.concurrency < 1 or self.max_attempts < 1:
            raise ValueError("n must be >= 0, concurrency and max_attempts >= 1")
        if not self.seeds:
            raise ValueError("no seeds")
        if not self.personas:
            raise ValueError("no personas")


@dataclass(frozen=True)
class Plan:
    """What conversation `index` is about and how its user behaves; fixed across attempts and restarts."""

    index: int
    seed: Seed
    persona: str
    opening_style: str
    turns: int
    followup_moves: tuple[str, ...]


def plan(config: SynthConfig, index: int) -> Plan:
    rng = random.Random(f"chatloom-synth:{config.seed}:{index}")
    turns = rng.randint(*config.turns)
    return Plan(index=index, seed=config.seeds[index % len(config.seeds)], persona=rng.choice(list(config.personas)),
                opening_style=rng.choice(OPENING_STYLES), turns=turns,
                followup_moves=tuple(rng.choice(FOLLOWUP_MOVES) for _ in range(turns - 1)))


@dataclass
class SynthResult:
    out: Path
    summary_path: Path
    rejects_path: Path
    summary: dict

    @property
    def complete(self) -> bool:
        return self.summary["complete"]


class _Run:
    """The state of one invocation: endpoints, counters, the output writers and the summary."""

    def __init__(self, config: SynthConfig, *, fresh: bool):
        self.config = config
        self.summary_path = sidecar(config.out, "summary")
        self.rejects_path = sidecar(config.out, "rejects")
        self.usage = {"user": Usage(config.user_model.name, config.user_model.endpoint, price_per_million=config.user_price),
                      "assistant": Usage(config.assistant_model.name, config.assistant_model.endpoint,
                                         price_per_million=config.assistant_price)}
        self.user = ChatEndpoint(config.user_model, "user", config.retry, config.user_sampling, self.usage["user"])
        self.assistant = ChatEndpoint(config.assistant_model, "assistant", config.retry, config.assistant_sampling,
                                      self.usage["assistant"])
        self.filtered: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failed_indices: dict[int, str] = {}
        self.gave_up: list[int] = []
        self.generated = 0
        self.fatal: str | None = None
        self.started = time.time()
        self.previous = None if fresh else _read_previous(self.summary_path, config)
        self.last_summary = 0.0
        self.torn_bytes = 0

    # ---------------------------------------------------------------------------------------------- one conversation
    async def generate(self, p: Plan, attempt: int) -> tuple[Conversation | None, Rejection | None, dict]:
        cfg = self.config
        rng = random.Random(f"chatloom-synth:{cfg.seed}:{p.index}:attempt{attempt}")
        messages: list[dict] = [{"role": "system", "content": cfg.system}] if cfg.system else []
        finish: list[str | None] = []
        meta = self.meta(p, attempt)
        request_seeds: list[int | None] = meta["synth"]["sampling"]["request_seeds"]  # one per turn, sent as `seed`

        def add(role: str, text: str, finish_reason: str | None, reasoning: str | None = None) -> Rejection | None:
            messages.append({"role": role, "content": text, **({"reasoning_content": reasoning} if reasoning else {})})
            finish.append(finish_reason)
            return check_turn(len(messages) - 1, messages[-1], finish_reason, allow_refusal=p.seed.allow_refusal,
                              config=cfg.filters)

        for turn in range(p.turns):
            if turn == 0 and cfg.verbatim_questions and p.seed.kind == "question":
                request_seeds.append(None)  # the seed question itself opens the conversation
                user_text, finish_reason = p.seed.text, "stop"
            else:
                if turn == 0:
                    ask = opening_request(p.seed, p.persona, p.opening_style)
                else:
                    ask = followup_request(p.seed, p.persona, p.followup_moves[turn - 1], messages)
                request_seeds.append(rng.randrange(2**31))
                reply = await self.user.complete(ask, seed=request_seeds[-1])
                user_text, finish_reason = clean_user_text(reply.text), reply.finish_reason
            if rejection := add("user", user_text, finish_reason):
                return None, rejection, {"messages": messages, "meta": meta}
            request_seeds.append(rng.randrange(2**31))
            # earlier reasoning is kept in the record, not sent back (DeepSeek's API refuses it; Qwen3 drops it)
            sent = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
            reply = await self.assistant.complete(sent, seed=request_seeds[-1])
            if rejection := add("assistant", reply.text.strip(), reply.finish_reason, reply.reasoning):
                return None, rejection, {"messages": messages, "meta": meta}
        rejection = check(messages, expected_turns=p.turns, finish_reasons=finish, allow_refusal=p.seed.allow_refusal,
                          config=cfg.filters)
        if rejection:
            return None, rejection, {"messages": messages, "meta": meta}
        meta["authors"] = [f"model:{(cfg.user_model if m['role'] == 'user' else cfg.assistant_model).name}"
                           for m in messages if m["role"] != "system"]  # one per turn, as the labeling app reads it
        record = {"id": synth_id(cfg.seed, p.index), "messages": messages, "meta": meta}
        return Conversation.from_dict(record, require_assistant_end=True), None, record

    def meta(self, p: Plan, attempt: int) -> dict:
        cfg = self.config
        return {"source": "synth", "tags": ["synthetic"], "synth": {
            "run_seed": cfg.seed, "index": p.index, "attempt": attempt, "turns": p.turns,
            "seed": p.seed.to_dict(), "persona": p.persona, "opening_style": p.opening_style,
            "followup_moves": list(p.followup_moves),
            "user_model": {"name": cfg.user_model.name, "endpoint": cfg.user_model.endpoint},
            "assistant_model": {"name": cfg.assistant_model.name, "endpoint": cfg.assistant_model.endpoint},
            "sampling": {"user": asdict(cfg.user_sampling), "assistant": asdict(cfg.assistant_sampling),
                         "request_seeds": []},
            "system_prompt": cfg.system is not None, "verbatim_question": cfg.verbatim_questions and p.seed.kind == "question",
        }}

    async def produce(self, index: int, out: AppendOnlyJsonl, rejects: AppendOnlyJsonl) -> bool:
        """Generate conversation `index` (retrying filtered attempts) and append it; False if it was not written."""
        p = plan(self.config, index)
        for attempt in range(self.config.max_attempts):
            try:
                conv, rejection, record = await self.generate(p, attempt)
            except EndpointError as e:
                if e.fatal:
                    raise
                self.failed[f"{e.role}:{e.reason}"] += 1
                self.failed_indices[index] = str(e)
                return False
            if conv is not None:
                out.write(conv.to_dict())
                self.generated += 1
                return True
            self.filtered[rejection.reason] += 1
            rejects.write({"index": index, "attempt": attempt, **rejection.to_dict(), "conversation": record})
        self.gave_up.append(index)
        return False

    # ---------------------------------------------------------------------------------------------------- summary
    def summary(self, done_before: set[int], written_now: set[int]) -> dict:
        cfg = self.config
        have = {i for i in done_before | written_now if i < cfg.n}
        missing = [i for i in range(cfg.n) if i not in have]
        prev = self.previous or {}
        total_usage = {}
        for role, usage in self.usage.items():
            total = Usage(usage.model, usage.endpoint, price_per_million=usage.price_per_million)
            total.add(prev.get("usage", {}).get(role, {}))
            total.add(usage.to_dict())
            total_usage[role] = total.to_dict()
        costs = [u["cost_usd"] for u in total_usage.values()]
        elapsed = time.time() - self.started
        return {
            "output": str(cfg.out), "rejects": str(self.rejects_path), "n": cfg.n, "run_seed": cfg.seed,
            "written": len(have), "complete": not missing, "missing_count": len(missing), "missing": missing[:MAX_LISTED],
            "runs": prev.get("runs", 0) + 1,
            "filtered": dict(Counter(prev.get("filtered", {})) + self.filtered),
            "usage": total_usage,
            "usage_by_model": _by_model(total_usage),
            "cost_usd": round(sum(costs), 6) if all(c is not None for c in costs) else None,
            "this_run": {
                "seconds": round(elapsed, 3), "resumed_with": len(done_before), "generated": self.generated,
                "conversations_per_second": round(self.generated / elapsed, 4) if elapsed > 0 else None,
                "filtered": dict(self.filtered), "gave_up_after_attempts": sorted(self.gave_up)[:MAX_LISTED],
                "failed": dict(self.failed),
                "failed_indices": {str(k): v for k, v in sorted(self.failed_indices.items())[:MAX_LISTED]},
                "fatal": self.fatal, "torn_line_bytes_truncated": self.torn_bytes,
                "usage": {role: u.to_dict() for role, u in self.usage.items()},
            },
            "config": {
                "user_model": cfg.user_model.label, "assistant_model": cfg.assistant_model.label,
                "turns": list(cfg.turns), "concurrency": cfg.concurrency, "seeds": len(cfg.seeds),
                "seed_kinds": sorted({s.kind for s in cfg.seeds}), "personas": len(cfg.personas),
                "system": cfg.system, "sampling": {"user": asdict(cfg.user_sampling),
                                                   "assistant": asdict(cfg.assistant_sampling)},
                "retry": asdict(cfg.retry), "max_attempts": cfg.max_attempts,
                "verbatim_questions": cfg.verbatim_questions,
                "filters": {"min_chars": cfg.filters.min_chars, "enabled": sorted(cfg.filters.enabled)},
            },
        }

    async def close(self) -> None:
        await self.user.close()
        await self.assistant.close()


def _by_model(usage: dict[str, dict]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for u in usage.values():
        m = merged.setdefault(f"{u['model']}@{u['endpoint']}", {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0})
        for k in m:
            m[k] += u[k]
    return merged


def _read_previous(path: Path, config: SynthConfig) -> dict | None:
    """The summary of earlier runs into the same output (their usage and filter counts carry over)."""
    if not path.exists():
        return None
    try:
        prev = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return prev if prev.get("run_seed") == config.seed else None


async def run_async(config: SynthConfig) -> SynthResult:
    """Generate the conversations missing from `config.out` (all N on a fresh run); see `run`."""
    out = AppendOnlyJsonl(config.out, exclusive=True)  # locked before recovery, which may truncate a torn line
    try:
        recovered = recover(config.out, config.seed)
    except BaseException:
        out.close()
        raise
    todo = [i for i in range(config.n) if i not in recovered.done]
    state = _Run(config, fresh=config.out.stat().st_size == 0)
    state.torn_bytes = recovered.torn_bytes
    written: set[int] = set()
    rejects = AppendOnlyJsonl(state.rejects_path)
    progress = _progress(config, len(recovered.done & set(range(config.n))))
    pending = iter(todo)

    def write_summary(force: bool = False) -> None:
        now = time.time()
        if force or now - state.last_summary >= SUMMARY_EVERY_SECONDS:
            state.last_summary = now
            write_json_atomic(state.summary_path, state.summary(recovered.done, written))

    async def worker() -> None:
        for index in pending:  # one shared iterator: each index goes to exactly one worker
            if await state.produce(index, out, rejects):
                written.add(index)
                if progress:
                    progress.advance(progress.task_ids[0])
            write_summary()

    try:
        if progress:
            progress.start()
        async with asyncio.TaskGroup() as group:
            for _ in range(min(config.concurrency, len(todo))):
                group.create_task(worker())
    except* EndpointError as errors:
        state.fatal = str(errors.exceptions[0])
    finally:
        if progress:
            progress.stop()
        out.close()
        rejects.close()
        await state.close()
        summary = state.summary(recovered.done, written)
        write_json_atomic(state.summary_path, summary)
    return SynthResult(config.out, state.summary_path, state.rejects_path, summary)


def run(config: SynthConfig) -> SynthResult:
    """Run synth to completion (or until every missing index was tried): returns the summary also written next to
    `config.out`. Check `result.complete`; running again continues with whatever is still missing."""
    return asyncio.run(run_async(config))


def _progress(config: SynthConfig, already: int):
    if not config.progress:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.2f} conv/s" if task.speed else "- conv/s")

    progress = Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=False)
    progress.add_task("synth", total=config.n, completed=already)
    return progress
