"""Checking a project's settings when they are saved, so a bad value is refused with a clear message instead of
breaking every page of the project later.

What an admin may choose is bounded by the operator (`SettingsPolicy`): draft endpoints by the names the operator
configured (keys stay with them, see `drafts`), or a typed http(s) URL that gets no key; tokenizers only from the
folders the operator allows (`chatloom label serve --tokenizer-dir DIR`), and they must load. A path outside those
folders is refused with the same message whether or not it exists, so the form cannot be used to probe the server's
file system. The command line (`chatloom label import`) is the operator and passes no policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import drafts

COUNTS = ("replies_per_prompt", "reviews_per_message", "rankings_per_prompt", "max_depth")
TEXTS = ("protocol", "tokenizer_path", "system_prompt", "draft_endpoint", "draft_base_url", "draft_model")
FIELDS = TEXTS + COUNTS
MAX_TEXT = {"protocol": 32, "tokenizer_path": 1024, "system_prompt": 20_000, "draft_endpoint": 64,
            "draft_base_url": 2048, "draft_model": 256}


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class SettingsPolicy:
    """What the operator allows admins to pick."""
    draft_endpoints: tuple[str, ...] = ()
    tokenizer_dirs: tuple[Path, ...] = ()
    allow_draft_urls: bool = True


def tokenizer_in_allowed_dir(path: str, dirs: tuple[Path, ...]) -> str:
    """The absolute path of `path` (absolute, or relative to one of `dirs`) if it lies inside one of `dirs`."""
    refused = SettingsError("the tokenizer must be a file or folder inside a tokenizer folder the operator allows"
                            + (f" ({', '.join(str(d) for d in dirs)})" if dirs else
                               " (none is allowed: start the server with --tokenizer-dir DIR)"))
    if not dirs or "\x00" in path:
        raise refused
    given = Path(path).expanduser()
    for root in dirs:
        root = root.resolve()
        candidate = (given if given.is_absolute() else root / given).resolve()
        if candidate.is_relative_to(root) and candidate.exists():
            return str(candidate)
    raise refused


def tokenizer_loads(protocol: str, tokenizer_path: str | None) -> None:
    from .preview import protocol_for_settings

    try:
        protocol_for_settings(protocol, tokenizer_path)
    except Exception as e:  # anything a broken file does to a loader
        kind = type(e).__name__
        raise SettingsError(f"the tokenizer {Path(tokenizer_path).name if tokenizer_path else '(bundled)'} does not "
                            f"load with protocol {protocol} ({kind}); pick a tokenizer.json, .tiktoken file or model "
                            "folder (for protocol hf: one with a chat template)") from None


def clean(settings: dict, current: dict, policy: SettingsPolicy | None) -> dict:
    """The new values to store (only the keys given), checked against each other, `current` and `policy`."""
    from ..protocols import NAMES

    unknown = set(settings) - set(FIELDS)
    if unknown:
        raise SettingsError(f"unknown project setting(s) {sorted(unknown)}")
    out: dict = {}
    for key, value in settings.items():
        if key in COUNTS:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 20:
                raise SettingsError(f"{key.replace('_', ' ')} must be between 1 and 20")
            out[key] = value
            continue
        if value is not None and not isinstance(value, str):
            raise SettingsError(f"{key.replace('_', ' ')} must be text")
        value = (value or "").strip() or None
        if value is not None and len(value) > MAX_TEXT[key]:
            raise SettingsError(f"{key.replace('_', ' ')} is longer than {MAX_TEXT[key]} characters")
        if value is not None and any(c in value for c in "\x00") :
            raise SettingsError(f"{key.replace('_', ' ')} contains a NUL character")
        out[key] = value
    merged = {**current, **out}
    if (merged.get("protocol") or "chatml") not in NAMES:
        raise SettingsError(f"protocol must be one of {', '.join(NAMES)}")
    if "draft_base_url" in out and out["draft_base_url"] is not None:
        if policy is not None and not policy.allow_draft_urls:
            raise SettingsError("this server only drafts with the endpoints its operator configured")
        try:
            out["draft_base_url"] = drafts.check_base_url(out["draft_base_url"])
        except ValueError as e:
            raise SettingsError(str(e)) from None
    if "draft_endpoint" in out and out["draft_endpoint"] is not None and policy is not None \
            and out["draft_endpoint"] not in policy.draft_endpoints:
        names = ", ".join(policy.draft_endpoints) or "none configured"
        raise SettingsError(f"no draft endpoint named {out['draft_endpoint']!r} (the operator's: {names})")
    merged = {**current, **out}
    if merged.get("draft_endpoint") and merged.get("draft_base_url"):
        raise SettingsError("pick one of the server's draft endpoints or type a URL of your own, not both")
    if "tokenizer_path" in out and out["tokenizer_path"] is not None and policy is not None:
        out["tokenizer_path"] = tokenizer_in_allowed_dir(out["tokenizer_path"], policy.tokenizer_dirs)
    merged = {**current, **out}
    protocol = merged.get("protocol") or "chatml"
    if protocol == "hf" and not merged.get("tokenizer_path"):
        raise SettingsError("protocol 'hf' needs a tokenizer path with a chat template")
    if policy is not None and ("tokenizer_path" in out or "protocol" in out):
        tokenizer_loads(protocol, merged.get("tokenizer_path"))
    return out
