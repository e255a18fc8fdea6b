"""`chatloom synth`: the command line over `chatloom.synth.run` (flags in, summary out; no logic of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from ..cli_error import fail
from ..conversation import ValidationError
from .endpoints import ModelSpec, RetryPolicy, Sampling, SpecError
from .filters import REASONS, FilterConfig
from .generate import SynthConfig, run
from .prompts import DEFAULT_PERSONAS, load_personas, load_seeds
from .store import OutputBusy

err = Console(stderr=True)


def parse_turns(text: str) -> tuple[int, int]:
    """`3` or `2-4` -> (min, max)."""
    try:
        lo, _, hi = text.partition("-")
        turns = (int(lo), int(hi or lo))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected N or MIN-MAX, e.g. 2-4") from None
    if not 1 <= turns[0] <= turns[1]:
        raise typer.BadParameter(f"{text!r}: need 1 <= MIN <= MAX")
    return turns


def parse_price(text: str | None) -> tuple[float, float] | None:
    """`IN,OUT` in USD per million tokens."""
    if text is None:
        return None
    try:
        p_in, p_out = (float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected IN,OUT (USD per million input and output tokens)") from None
    return p_in, p_out


def synth(
    topics: Path = typer.Option(None, "--topics", help="Seed topics: one per line (or JSONL with \"topic\")."),
    seeds: Path = typer.Option(None, "--seeds", help="Seed questions: one per line (or JSONL with \"question\", "
                                                      "\"allow_refusal\")."),
    user_model: str = typer.Option(..., "--user-model", help="User simulator as NAME@URL (OpenAI base URL)."),
    assistant_model: str = typer.Option(..., "--assistant-model", help="Assistant as NAME@URL (may equal the user's)."),
    turns: str = typer.Option("2-4", "--turns", help="User/assistant pairs per conversation: N or MIN-MAX."),
    n: int = typer.Option(..., "--n", help="How many conversations the output should hold."),
    out: Path = typer.Option(..., "-o", "--out", help="Output JSONL (append-only; a rerun continues it)."),
    concurrency: int = typer.Option(8, "--concurrency", help="Conversations in flight at once."),
    system: str = typer.Option(None, "--system", help="System prompt given to the assistant (kept in the output)."),
    persona_file: Path = typer.Option(None, "--persona-file", help="Personas for the user simulator, one per line."),
    to_label: str = typer.Option(None, "--to-label", help="Hand the finished conversations to this labeling project."),
    label_db: str = typer.Option(None, "--label-db", help="Database URL of the labeling app (default: its own)."),
    seed: int = typer.Option(0, "--seed", help="Run seed: conversation ids are synth-SEED-INDEX."),
    user_temperature: float = typer.Option(1.0, "--user-temperature"),
    assistant_temperature: float = typer.Option(0.7, "--assistant-temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    user_max_tokens: int = typer.Option(256, "--user-max-tokens"),
    assistant_max_tokens: int = typer.Option(1024, "--assistant-max-tokens"),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per request before it counts as failed."),
    max_retries: int = typer.Option(4, "--max-retries", help="Retries per request (exponential backoff with jitter)."),
    backoff: float = typer.Option(1.0, "--backoff", help="First backoff in seconds (doubles per retry, max 30)."),
    verbatim: bool = typer.Option(False, "--verbatim", help="With --seeds: open with each question as written."),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Attempts per conversation when filters reject it."),
    min_chars: int = typer.Option(8, "--min-chars", help="Shortest acceptable turn, in characters."),
    no_filter: list[str] = typer.Option([], "--no-filter", help=f"Turn a filter off: {', '.join(REASONS[1:])}."),
    user_price: str = typer.Option(None, "--user-price", help="IN,OUT USD per million tokens, for cost accounting."),
    assistant_price: str = typer.Option(None, "--assistant-price", help="IN,OUT USD per million tokens."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Generate multi-turn synthetic conversations: a user-simulator model talks to an assistant model.

    API keys come from the environment only (CHATLOOM_SYNTH_API_KEY, then OPENAI_API_KEY; or CHATLOOM_SYNTH_USER_API_KEY /
    CHATLOOM_SYNTH_ASSISTANT_API_KEY per role); they are never written anywhere. Writes OUT, OUT's .summary.json
    (token usage, cost, filter counts, failures) and .rejects.jsonl next to it. Exit code 1 if conversations are missing
    (run the same command again to continue).
    """
    if (topics is None) == (seeds is None):
        fail("give exactly one of --topics FILE or --seeds FILE")
    if "empty_turn" in no_filter:
        fail("empty turns are never kept (an empty message is not a valid conversation)")
    try:
        seed_list = load_seeds(topics, "topic") if topics else load_seeds(seeds, "question")
        personas = load_personas(persona_file) if persona_file else list(DEFAULT_PERSONAS)
        config = SynthConfig(
            seeds=seed_list, user_model=ModelSpec.parse(user_model), assistant_model=ModelSpec.parse(assistant_model),
            n=n, out=out, turns=parse_turns(turns), concurrency=concurrency, system=system, personas=personas,
            seed=seed, user_sampling=Sampling(user_temperature, top_p, user_max_tokens),
            assistant_sampling=Sampling(assistant_temperature, top_p, assistant_max_tokens),
            retry=RetryPolicy(max_retries=max_retries, timeout=timeout, backoff_base=backoff),
            filters=FilterConfig(min_chars=min_chars, enabled=frozenset(REASONS) - set(no_filter)),
            max_attempts=max_attempts, verbatim_questions=verbatim, user_price=parse_price(user_price), assistant_price=parse_price(assistant_price),
            progress=progress)
        result = run(config)
    except (ValidationError, SpecError, FileNotFoundError, ValueError, OutputBusy) as e:
        fail(str(e))
    s = result.summary
    this = s["this_run"]
    filtered = ", ".join(f"{k} {v}" for k, v in this["filtered"].items())
    failed = ", ".join(f"{k} {v}" for k, v in this["failed"].items())
    err.print(f"{s['written']}/{s['n']} conversations in {result.out} (+{this['generated']} this run); "
              f"filtered {sum(this['filtered'].values())}{f' ({filtered})' if filtered else ''}; "
              f"failed {len(this['failed_indices'])}{f' ({failed})' if failed else ''}; summary: {result.summary_path}",
              highlight=False)
    err.print("tokens: " + json.dumps({r: {k: u[k] for k in ("prompt_tokens", "completion_tokens", "cost_usd")}
                                        for r, u in s["usage"].items()}), highlight=False)
    if this["fatal"]:
        fail(f"stopped: {this['fatal']}", code=1)
    if to_label and result.complete:
        from .handoff import to_label as hand_off

        try:
            count = hand_off(result.out, to_label, label_db)
        except RuntimeError as e:
            fail(str(e), code=1)
        err.print(f"handed {count} conversations to labeling project {to_label!r}")
    if not result.complete:
        fail(f"{s['missing_count']} conversations missing; run the same command again to continue"
             + (" (not handed to labeling)" if to_label else ""), code=1)
