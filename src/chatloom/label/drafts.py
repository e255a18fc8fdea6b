"""LLM drafts for the reply editor: the conversation so far is sent to an OpenAI-compatible endpoint (`chatloom serve`,
vLLM, llama.cpp, OpenAI ...) and the answer pre-fills the editor. Endpoint and model come from the project, else from
CHATLOOM_LABEL_DRAFT_BASE_URL / CHATLOOM_LABEL_DRAFT_MODEL / CHATLOOM_LABEL_DRAFT_API_KEY
(and CHATLOOM_LABEL_DRAFT_MAX_TOKENS, default 512)."""

from __future__ import annotations

import os
from dataclasses import dataclass


class DraftError(RuntimeError):
    pass


@dataclass
class Endpoint:
    base_url: str
    model: str | None
    api_key: str


def endpoint_for(project) -> Endpoint:
    base_url = project.draft_base_url or os.environ.get("CHATLOOM_LABEL_DRAFT_BASE_URL")
    if not base_url:
        raise DraftError("no draft model configured: set the project's draft endpoint or CHATLOOM_LABEL_DRAFT_BASE_URL")
    return Endpoint(base_url.rstrip("/"), project.draft_model or os.environ.get("CHATLOOM_LABEL_DRAFT_MODEL"),
                    os.environ.get("CHATLOOM_LABEL_DRAFT_API_KEY", "not-needed"))


def draft_reply(endpoint: Endpoint, messages: list[dict], *, max_tokens: int | None = None, temperature: float = 0.7,
                timeout: float = 120.0) -> tuple[str, str]:
    """(model name, draft text) for the next assistant turn after `messages` (OpenAI chat format)."""
    import openai

    max_tokens = max_tokens or int(os.environ.get("CHATLOOM_LABEL_DRAFT_MAX_TOKENS", "512"))
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=timeout, max_retries=0)
    try:
        model = endpoint.model or client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                               temperature=temperature)
    except (openai.OpenAIError, IndexError) as e:
        raise DraftError(f"draft endpoint {endpoint.base_url} failed: {e}") from e
    text = reply.choices[0].message.content or ""
    return reply.model or model, text
