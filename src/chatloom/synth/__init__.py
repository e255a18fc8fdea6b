"""Synthetic conversations (UltraChat-style) against OpenAI-compatible endpoints: a user-simulator model and an
assistant model talk for a few turns from seed topics or questions; runs are concurrent, resumable and filtered, with
token/cost accounting and provenance in `meta` (see `run` and `SynthConfig`; the CLI is `chatloom synth`)."""

from .endpoints import KEY_ENV_VARS, EndpointError, ModelSpec, RetryPolicy, Sampling, SpecError
from .filters import REASONS as FILTER_REASONS
from .filters import FilterConfig
from .generate import Plan, SynthConfig, SynthResult, plan, run, run_async
from .prompts import DEFAULT_PERSONAS, Seed, load_personas, load_seeds
from .store import OutputBusy, synth_id

__all__ = ["KEY_ENV_VARS", "DEFAULT_PERSONAS", "EndpointError", "FILTER_REASONS", "FilterConfig", "ModelSpec", "OutputBusy", "Plan",
           "RetryPolicy", "Sampling", "Seed", "SpecError", "SynthConfig", "SynthResult", "load_personas", "load_seeds",
           "plan", "run", "run_async", "synth_id"]
