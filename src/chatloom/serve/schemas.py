"""The request bodies the API accepts, validated at the edge: every field has a type and a range, so nothing a client
sends can make the decoding thread fail (a bad value is a 400 naming the field, in OpenAI's error shape).

Ranges: `seed` in [0, 2**63) (seeds of the n choices are `seed + i`, wrapped into that range); `temperature` in [0, 2];
`top_p` in (0, 1]; `top_k` >= 0; `repetition_penalty` in (0, 10]; `n` 1..MAX_N; `max_tokens` >= 1 and below the
context window; at most MAX_STOP stop strings of at most MAX_STOP_CHARACTERS each; finite numbers only; text without
unpaired surrogates (JSON `\\ud800` decodes to a string that cannot be encoded); at most MAX_MESSAGES messages holding
at most MAX_CHARACTERS characters.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..conversation import Conversation, ValidationError
from ..engine import SamplingParams
from .errors import ApiError

MAX_MESSAGES = 256
MAX_CHARACTERS = 200_000
MAX_BODY_BYTES = 2_000_000
MAX_N = 8
MAX_STOP = 4
MAX_STOP_CHARACTERS = 1_000
SEED_LIMIT = 2**63
DEFAULT_MAX_TOKENS = 512


def _encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text holds an unpaired surrogate at character {e.start}") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
Finite = {"allow_inf_nan": False}


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_call_id: Text | None = None
    reasoning_content: Text | None = None  # an assistant's reasoning (DeepSeek / vLLM), rendered as the protocol does

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


Stop = Annotated[Text, Field(max_length=MAX_STOP_CHARACTERS)]


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Text | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2, **Finite)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1, **Finite)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    repetition_penalty: Annotated[float, Field(gt=0, le=10, **Finite)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int, Field(ge=0, lt=SEED_LIMIT)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self, max_context: int) -> list[SamplingParams]:
        """One SamplingParams per choice (choice i samples with seed + i), or an ApiError for a reply that cannot fit."""
        max_tokens = self.max_completion_tokens or self.max_tokens or min(DEFAULT_MAX_TOKENS, max_context // 2)
        if max_tokens >= max_context:
            raise ApiError(400, f"max_tokens is {max_tokens}; this model's context window is {max_context} tokens",
                           "max_tokens", "context_length_exceeded")
        try:
            return [SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                   repetition_penalty=self.repetition_penalty, stop=self.stop,
                                   seed=None if self.seed is None else (self.seed + i) % SEED_LIMIT)
                    for i in range(self.n)]
        except ValueError as e:  # the model above already holds every range; this is a second line
            raise ApiError(400, str(e)) from None


class TokensRequest(BaseModel):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    add_generation_prompt: bool = False


def to_conversation(messages: list[ChatMessage]) -> Conversation:
    """The Conversation the messages describe (`developer` is `system`), or an ApiError saying which field is wrong."""
    total = sum(len(m.text()) + len(m.reasoning_content or "") for m in messages)
    if total > MAX_CHARACTERS:
        raise ApiError(400, f"messages hold {total} characters; the limit is {MAX_CHARACTERS}", "messages", "too_long")
    raw = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
            **({"name": m.name} if m.name else {}), **({"tool_call_id": m.tool_call_id} if m.tool_call_id else {}),
            **({"reasoning_content": m.reasoning_content} if m.reasoning_content is not None else {})}
           for m in messages]
    try:
        return Conversation.from_dict({"messages": raw})
    except ValidationError as e:
        raise ApiError(400, str(e), e.field or "messages") from None
    except (TypeError, ValueError) as e:
        raise ApiError(400, str(e), "messages") from None
