"""Protocols: conversation <-> tokens. `get("gpt4o" | "chatml" | "llama3" | "hf", tokenizer=...)` or `from_template(...)`.

Training, evaluation, the engine, the server and the labeling preview all use these objects: `render` (ids, mask,
message index), `prompt` (ids up to the assistant header) and `parse` (ids back to a Conversation).
"""

from __future__ import annotations

from ..tokenizers import Tokenizer, copy_tokenizer, load_tokenizer
from .base import Part, Protocol, ProtocolError, Rendered
from .builtin import BUILTIN, ChatML, GPT4o, Llama3
from .reasoning import ReasoningSplitter, split_reasoning
from .template import TemplateProtocol, from_template, read_template_source

NAMES = (*BUILTIN, "hf")


def get(name: str, tokenizer: Tokenizer | str | None = None, *, template=None, copy: bool = False, **kw) -> Protocol:
    """A protocol by name. `hf` needs `template=` (string, .jinja, tokenizer_config.json or model directory) or a
    tokenizer with a template.

    Changes the tokenizer it is given: the protocol's missing control tokens are added to `tokenizer` as special
    tokens (its length grows; the model's embedding must then be grown to match, `train.models.fit_vocab`). Many
    callers rely on this, so it stays the default; pass `copy=True` to work on a copy and leave `tokenizer` untouched."""
    if tokenizer is None:
        if name == "hf" and template is not None:
            return from_template(template, None, **kw)
        raise ValueError(f"protocol {name!r} needs a tokenizer")
    tokenizer = load_tokenizer(tokenizer)
    if copy:
        tokenizer = copy_tokenizer(tokenizer)
    if name in BUILTIN:
        return BUILTIN[name](tokenizer)
    if name == "hf":
        if template is None:
            hf = getattr(tokenizer, "hf", None)
            template = getattr(hf, "chat_template", None)
            if not template:
                raise ValueError(f"protocol 'hf': tokenizer {tokenizer.name} has no chat template; pass template=")
        return from_template(template, tokenizer, **kw)
    raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(NAMES)}")


def for_model(model_dir, tokenizer: Tokenizer | None = None) -> Protocol:
    """The protocol a model directory was trained with: the built-in named in its `chatloom.json` when chatloom wrote
    it, otherwise `hf` from its chat template (`chat_template.jinja` or `tokenizer_config.json`)."""
    from .. import model_meta

    tokenizer = load_tokenizer(tokenizer or model_dir)
    name = model_meta.protocol(model_dir)
    if name in BUILTIN:
        return BUILTIN[name](tokenizer)
    return from_template(model_dir, tokenizer)


def resolve(protocol: str = "chatml", tokenizer: Tokenizer | str | None = None, template=None) -> Protocol:
    """The protocol a command line asked for: `template` (a Jinja template, tokenizer_config.json or model directory)
    means `hf` with that template, otherwise `protocol` by name; `tokenizer` defaults to chatloom's bundled BPE. Like
    `get`, it adds the protocol's control tokens to that tokenizer."""
    tok = load_tokenizer(tokenizer or None)
    if template is not None:
        return from_template(template, tok)
    return get(protocol, tok)


__all__ = ["for_model", "get", "resolve", "from_template", "read_template_source", "Protocol", "ProtocolError", "Rendered", "Part",
           "TemplateProtocol", "GPT4o", "ChatML", "Llama3", "NAMES", "ReasoningSplitter", "split_reasoning"]
