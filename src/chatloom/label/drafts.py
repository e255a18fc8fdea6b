"""LLM drafts for the reply editor: the conversation so far is sent to an OpenAI-compatible endpoint (`chatloom serve`,
vLLM, llama.cpp, OpenAI ...) and the answer pre-fills the editor.

Secrets stay with the endpoint they were issued for. The operator names draft endpoints and their keys when starting
the server (`chatloom label serve --draft-endpoint NAME=BASE_URL [--draft-key NAME=KEY]`, or the environment:
`CHATLOOM_LABEL_DRAFT_ENDPOINTS="NAME=BASE_URL;..."` with `CHATLOOM_LABEL_DRAFT_KEY_<NAME>`; the older
`CHATLOOM_LABEL_DRAFT_BASE_URL` / `_MODEL` / `_API_KEY` define the endpoint `default`). A project picks one of them by
name. An admin may instead type a base URL of their own: such a URL is sent no key at all, ever. Keys live only in the
server's memory: never in the database, never on a page, never in an export.
CHATLOOM_LABEL_DRAFT_MAX_TOKENS (default 512) bounds a draft.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

NO_KEY = "no-key"  # what an endpoint without a key (or an admin-typed URL) is sent as the bearer token
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class DraftError(RuntimeError):
    pass


class EndpointConfigError(ValueError):
    """The operator's endpoint configuration is malformed (raised at startup)."""


@dataclass(frozen=True)
class Endpoint:
    name: str | None  # None: a URL an admin typed (it never carries a key)
    base_url: str
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def public(self) -> dict:
        """What pages may show: never the key, only whether there is one."""
        return {"name": self.name, "base_url": self.base_url, "model": self.model, "has_key": bool(self.api_key)}


def check_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"a draft endpoint must be an http(s) base URL without credentials, e.g. "
                         f"http://127.0.0.1:8000/v1 (got {url[:200]!r})")
    return url


def key_env_name(name: str) -> str:
    return "CHATLOOM_LABEL_DRAFT_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


class Endpoints:
    """The operator's named draft endpoints (name -> Endpoint)."""

    def __init__(self, endpoints: Iterable[Endpoint] = ()):
        self._by_name = {e.name: e for e in endpoints}

    @classmethod
    def configure(cls, specs: Iterable[str] = (), keys: Iterable[str] = (),
                  environ: Mapping[str, str] | None = None) -> Endpoints:
        """From `NAME=BASE_URL` specs and `NAME=KEY` pairs (command line), then the environment (see the module doc)."""
        environ = os.environ if environ is None else environ
        urls: dict[str, str] = {}
        models: dict[str, str] = {}
        secrets: dict[str, str] = {}
        legacy = environ.get("CHATLOOM_LABEL_DRAFT_BASE_URL")
        if legacy:
            urls["default"] = legacy
            if environ.get("CHATLOOM_LABEL_DRAFT_MODEL"):
                models["default"] = environ["CHATLOOM_LABEL_DRAFT_MODEL"]
            if environ.get("CHATLOOM_LABEL_DRAFT_API_KEY"):
                secrets["default"] = environ["CHATLOOM_LABEL_DRAFT_API_KEY"]
        env_specs = [s for s in re.split(r"[;\s]+", environ.get("CHATLOOM_LABEL_DRAFT_ENDPOINTS", "")) if s]
        for spec in [*env_specs, *specs]:
            name, url = _pair(spec, "--draft-endpoint", "NAME=BASE_URL")
            urls[name] = url
        for name in urls:
            if environ.get(key_env_name(name)):
                secrets[name] = environ[key_env_name(name)]
        for pair in keys:
            name, key = _pair(pair, "--draft-key", "NAME=KEY", url=False)
            if name not in urls:
                raise EndpointConfigError(f"--draft-key {name}=...: no draft endpoint named {name!r}")
            secrets[name] = key
        out = []
        for name, url in urls.items():
            try:
                out.append(Endpoint(name, check_base_url(url), models.get(name), secrets.get(name)))
            except ValueError as e:
                raise EndpointConfigError(f"draft endpoint {name!r}: {e}") from None
        return cls(out)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Endpoint:
        if name not in self._by_name:
            raise DraftError(f"the server has no draft endpoint named {name!r} (ask the operator: "
                             "chatloom label serve --draft-endpoint NAME=BASE_URL)")
        return self._by_name[name]

    def default(self) -> Endpoint | None:
        """The endpoint for projects that name none: `default`, or the only one there is."""
        if "default" in self._by_name:
            return self._by_name["default"]
        return next(iter(self._by_name.values())) if len(self._by_name) == 1 else None

    def public(self) -> list[dict]:
        return [self._by_name[n].public() for n in self.names()]

    def __len__(self) -> int:
        return len(self._by_name)


def _pair(spec: str, option: str, shape: str, url: bool = True) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    name = name.strip()
    if not sep or not NAME_RE.fullmatch(name) or not value.strip():
        raise EndpointConfigError(f"{option} expects {shape}" + (f", got {spec[:200]!r}" if url else ""))
    return name, value.strip()


def endpoint_for(project, endpoints: Endpoints) -> Endpoint:
    """The endpoint a project's drafts go to: its named operator endpoint (with that endpoint's key), else the URL an
    admin typed (with no key), else the operator's default."""
    if getattr(project, "draft_endpoint", None):
        chosen = endpoints.get(project.draft_endpoint)
        return Endpoint(chosen.name, chosen.base_url, project.draft_model or chosen.model, chosen.api_key)
    if project.draft_base_url:
        return Endpoint(None, check_base_url(project.draft_base_url), project.draft_model, None)
    chosen = endpoints.default()
    if chosen is None:
        raise DraftError("no draft model configured: pick the project's draft endpoint in its settings "
                         "(the operator names endpoints with chatloom label serve --draft-endpoint NAME=BASE_URL)")
    return Endpoint(chosen.name, chosen.base_url, project.draft_model or chosen.model, chosen.api_key)


def draft_reply(endpoint: Endpoint, messages: list[dict], *, max_tokens: int | None = None, temperature: float = 0.7,
                timeout: float = 120.0) -> tuple[str, str]:
    """(model name, draft text) for the next assistant turn after `messages` (OpenAI chat format)."""
    import openai

    max_tokens = max_tokens or int(os.environ.get("CHATLOOM_LABEL_DRAFT_MAX_TOKENS", "512"))
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key or NO_KEY, timeout=timeout,
                           max_retries=0)
    where = endpoint.name or endpoint.base_url
    try:
        model = endpoint.model or client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                               temperature=temperature)
        text = reply.choices[0].message.content or ""
    except (openai.OpenAIError, IndexError, AttributeError, TypeError) as e:
        code = getattr(e, "status_code", None)  # the error's own text may quote a (masked) key: not shown
        raise DraftError(f"draft endpoint {where} failed: {type(e).__name__}"
                         + (f" (HTTP {code})" if code else "")) from e
    return reply.model or model, text
