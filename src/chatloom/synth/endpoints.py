"""OpenAI-compatible endpoints for synth: `NAME@URL` specs, the API key from the environment, and one chat call with a
timeout, retries (exponential backoff with full jitter) and per-role token accounting.

Keys come only from environment variables and are never written to outputs, summaries or logs: provenance records the
model name and the endpoint (scheme, host, port, path) only.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit, urlunsplit

KEY_ENV_VARS = ("CHATLOOM_SYNTH_API_KEY", "OPENAI_API_KEY")
"""Shared key variables, in order; a role-specific `CHATLOOM_SYNTH_USER_API_KEY` / `..._ASSISTANT_API_KEY` wins."""

FATAL_STATUS = {401, 403, 404}
RETRYABLE_STATUS = {408, 409, 425, 429}

_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk|key|api)[-_][A-Za-z0-9_\-*.]{6,}", re.IGNORECASE)
_SPEC = re.compile(r"^(?P<name>[^\s]+?)@(?P<url>https?://\S+)$")


class SpecError(ValueError):
    """A `NAME@URL` that cannot be used."""


@dataclass(frozen=True)
class ModelSpec:
    """A model name served at an OpenAI-compatible base URL (`NAME@http://127.0.0.1:8000/v1`)."""

    name: str
    base_url: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        m = _SPEC.match(text.strip())
        if not m:
            raise SpecError(f"{text!r}: expected NAME@URL, e.g. my-model@http://127.0.0.1:8000/v1")
        parts = urlsplit(m["url"])
        if parts.username or parts.password:
            raise SpecError(f"model {m['name']!r}: do not put credentials in the URL; set CHATLOOM_SYNTH_API_KEY instead")
        if not parts.hostname:
            raise SpecError(f"{text!r}: the URL has no host")
        return cls(m["name"], m["url"].rstrip("/"))

    @property
    def endpoint(self) -> str:
        """The base URL without query, fragment or credentials: safe to record."""
        p = urlsplit(self.base_url)
        netloc = p.hostname + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, "", ""))

    @property
    def label(self) -> str:
        return f"{self.name}@{self.endpoint}"


def api_key(role: str) -> str | None:
    """The key for `role` (user or assistant) from the environment, or None (local servers need none)."""
    for var in (f"CHATLOOM_SYNTH_{role.upper()}_API_KEY", *KEY_ENV_VARS):
        if os.environ.get(var):
            return os.environ[var]
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request: `max_retries` more attempts after the first, each bounded by `timeout` seconds."""

    max_retries: int = 4
    timeout: float = 120.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0

    def delay(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**retry)], so clients that failed together do not retry together."""
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**retry))


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512


@dataclass
class Usage:
    """What one role spent: requests, tokens (from the API's `usage`), retries and failures by reason."""

    model: str = ""
    endpoint: str = ""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    responses_without_usage: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    price_per_million: tuple[float, float] | None = None

    def add(self, other: dict) -> None:
        for k in ("requests", "prompt_tokens", "completion_tokens", "responses_without_usage", "retries"):
            setattr(self, k, getattr(self, k) + int(other.get(k, 0)))
        for k, v in (other.get("errors") or {}).items():
            self.errors[k] = self.errors.get(k, 0) + int(v)

    @property
    def cost_usd(self) -> float | None:
        if self.price_per_million is None:
            return None
        p_in, p_out = self.price_per_million
        return round((self.prompt_tokens * p_in + self.completion_tokens * p_out) / 1e6, 6)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_tokens"] = self.prompt_tokens + self.completion_tokens
        d["price_per_million"] = list(self.price_per_million) if self.price_per_million else None
        d["cost_usd"] = self.cost_usd
        return d


class EndpointError(Exception):
    """A request that failed for good: after its retries, or at once when retrying cannot help (`fatal`)."""

    def __init__(self, role: str, reason: str, detail: str, *, fatal: bool = False):
        self.role, self.reason, self.detail, self.fatal = role, reason, detail, fatal
        super().__init__(f"{role} model: {reason}: {detail}")


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None
    reasoning: str | None = None  # the `reasoning_content` a reasoning model returned beside its content (DeepSeek, vLLM)


def _classify(e: Exception) -> tuple[str, bool, bool]:
    """(reason, retryable, fatal) for an exception raised by the openai client."""
    import openai

    if isinstance(e, openai.APITimeoutError | TimeoutError):
        return "timeout", True, False
    if isinstance(e, openai.APIConnectionError):
        return "connection", True, False
    if isinstance(e, openai.APIStatusError):
        s = e.status_code
        if s in FATAL_STATUS:
            return f"http_{s}", False, True
        return f"http_{s}", s >= 500 or s in RETRYABLE_STATUS, False
    if isinstance(e, openai.APIResponseValidationError):
        return "bad_response", True, False
    raise e


class ChatEndpoint:
    """One role's model behind the official async `openai` client (its own retries off: we count ours)."""

    def __init__(self, spec: ModelSpec, role: str, retry: RetryPolicy, sampling: Sampling, usage: Usage):
        from openai import AsyncOpenAI  # imported here so `chatloom --help` stays fast

        self.spec, self.role, self.retry, self.sampling, self.usage = spec, role, retry, sampling, usage
        self._key = api_key(role)
        self.client = AsyncOpenAI(base_url=spec.base_url, api_key=self._key or "not-needed",
                                  timeout=retry.timeout, max_retries=0)

    def redact(self, text: str) -> str:
        """An error message safe to record: servers echo keys (even partly masked) in 401 bodies."""
        if self._key:
            text = text.replace(self._key, "<key>")
        return _KEY_LIKE.sub("<key>", text)

    async def complete(self, messages: list[dict], *, seed: int | None = None) -> Reply:
        import openai

        last = ""
        for attempt in range(self.retry.max_retries + 1):
            if attempt:
                self.usage.retries += 1
                await asyncio.sleep(self.retry.delay(attempt - 1))
            self.usage.requests += 1
            try:
                async with asyncio.timeout(self.retry.timeout):  # a hard bound, also for servers that trickle bytes
                    response = await self.client.chat.completions.create(
                        model=self.spec.name, messages=messages, temperature=self.sampling.temperature,
                        top_p=self.sampling.top_p, max_tokens=self.sampling.max_tokens,
                        seed=openai.omit if seed is None else seed)
            except Exception as e:  # noqa: BLE001 - classified below; unknown kinds re-raise
                reason, retryable, fatal = _classify(e)
                self.usage.errors[reason] = self.usage.errors.get(reason, 0) + 1
                message = self.redact(str(e))
                last = f"{reason} ({type(e).__name__}: {message[:200]})"
                if fatal:
                    raise EndpointError(self.role, reason, f"{self.spec.label}: {message[:300]}", fatal=True) from e
                if not retryable:
                    raise EndpointError(self.role, reason, last) from e
                continue
            if response.usage is not None:
                self.usage.prompt_tokens += response.usage.prompt_tokens or 0
                self.usage.completion_tokens += response.usage.completion_tokens or 0
            else:
                self.usage.responses_without_usage += 1
            choice = response.choices[0] if response.choices else None
            if choice is None or choice.message is None:
                self.usage.errors["no_choice"] = self.usage.errors.get("no_choice", 0) + 1
                last = "no_choice (the response had no message)"
                continue
            reasoning = getattr(choice.message, "reasoning_content", None)  # an extra field of the openai model
            return Reply(choice.message.content or "", choice.finish_reason,
                         reasoning if isinstance(reasoning, str) else None)
        reason = last.split(" ", 1)[0] or "error"
        raise EndpointError(self.role, reason, f"gave up after {self.retry.max_retries + 1} attempts; last: {last}")

    async def close(self) -> None:
        await self.client.close()
