"""Quality filters for synthetic conversations; each rejection names its reason so a run can count them.

A conversation is rejected for: an empty or too-short turn, an over-polite closing turn ("thanks!" / "you're welcome"),
an assistant refusal (unless the seed asks for one), broken role alternation (a turn that speaks for the other side, or
the wrong number or order of turns), or an answer cut off by the token limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..refusal import is_refusal

REASONS = ("empty_turn", "too_short_turn", "polite_closing", "refusal", "role_alternation", "truncated")

_THANKS = re.compile(
    r"^(?:(?:ok(?:ay)?|great|perfect|awesome|cool|got it|i see|wonderful|that'?s? (?:great|helpful|perfect|clear))[,.!\s]*)?"
    r"(?:thanks?(?: you)?|thank you|thx|ty|many thanks|cheers|goodbye|bye)\b", re.IGNORECASE)
_WELCOME = re.compile(
    r"^(?:you'?re (?:very |most )?welcome|my pleasure|glad (?:i could|i was able to|to) help|happy to help|no problem|"
    r"anytime)\b", re.IGNORECASE)
_OTHER_SPEAKER = re.compile(r"^\s*(?:\[?(?:user|assistant|human|ai)\]?\s*:|\[(?:user|assistant)\])", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class FilterConfig:
    """Which filters run (all by default) and the shortest acceptable turn, in characters."""

    min_chars: int = 8
    enabled: frozenset[str] = field(default_factory=lambda: frozenset(REASONS))

    def __post_init__(self):
        unknown = set(self.enabled) - set(REASONS)
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}; known: {', '.join(REASONS)}")


@dataclass(frozen=True)
class Rejection:
    reason: str
    message_index: int | None
    detail: str

    def to_dict(self) -> dict:
        return {"reason": self.reason, "message_index": self.message_index, "detail": self.detail}


def is_polite_closing(text: str, role: str) -> bool:
    """A short turn that only thanks, welcomes or says goodbye (it teaches nothing and ends conversations early): a user
    turn that opens with thanks and asks nothing, or a short assistant turn that opens with "you're welcome"."""
    text = text.strip()
    if role == "user":
        return len(text) <= 200 and "?" not in text and bool(_THANKS.match(text))
    return len(text) <= 300 and bool(_WELCOME.match(text))


def check_turn(index: int, message: dict, finish_reason: str | None, *, allow_refusal: bool,
               config: FilterConfig) -> Rejection | None:
    """The first reason to reject a conversation because of this one turn, or None (checked as each turn arrives, so a
    bad conversation stops early and costs no more tokens)."""
    on, role = config.enabled, message["role"]
    text = message["content"].strip()
    if not text:
        return Rejection("empty_turn", index, f"empty {role} turn")
    if "too_short_turn" in on and len(text) < config.min_chars:
        return Rejection("too_short_turn", index, f"{role} turn of {len(text)} characters < {config.min_chars}")
    if "truncated" in on and finish_reason == "length":
        return Rejection("truncated", index, f"{role} turn hit the token limit")
    if "polite_closing" in on and is_polite_closing(text, role):
        return Rejection("polite_closing", index, f"{role} turn is a closing pleasantry: {text[:80]!r}")
    if "role_alternation" in on and _OTHER_SPEAKER.search(text):
        return Rejection("role_alternation", index, f"{role} turn speaks with a role label: {text[:80]!r}")
    if "refusal" in on and role == "assistant" and not allow_refusal and is_refusal(text):
        return Rejection("refusal", index, f"assistant refused: {text[:80]!r}")
    return None


def check(messages: list[dict], *, expected_turns: int, finish_reasons: list[str | None], allow_refusal: bool,
          config: FilterConfig) -> Rejection | None:
    """The first reason to reject a whole conversation, or None. `finish_reasons` parallels the non-system messages."""
    body = [(i, m) for i, m in enumerate(messages) if m["role"] != "system"]
    roles = [m["role"] for _, m in body]
    if roles != ["user", "assistant"] * expected_turns:
        return Rejection("role_alternation", None, f"expected {expected_turns} user/assistant pairs, got roles {roles}")
    for (i, m), finish in zip(body, finish_reasons, strict=True):
        rejection = check_turn(i, m, finish, allow_refusal=allow_refusal, config=config)
        if rejection:
            return rejection
    return None
