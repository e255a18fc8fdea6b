"""The Jinja environment chat templates expect, as transformers sets it up.

Templates on the Hub are written against transformers' renderer: a sandboxed environment with trim_blocks and
lstrip_blocks, the loopcontrols extension, a `tojson` that does not HTML-escape, `raise_exception`, `strftime_now`, and
the `{% generation %}` block that marks assistant output. Rendering the same way is what makes chatloom's text equal to
`apply_chat_template`'s. `{% generation %}` spans are recorded as character ranges of the output.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

GEN_OPEN, GEN_CLOSE = "\U000ffff0", "\U000ffff1"  # wrap {% generation %} output; removed after rendering


class TemplateError(ValueError):
    """The chat template raised (e.g. `raise_exception('Conversation roles must alternate')`) or does not compile."""


class _Generation(jinja2.ext.Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller):
        return GEN_OPEN + caller() + GEN_CLOSE


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    def __setitem__(self, name, value):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")
        super().__setitem__(name, value)


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not compile: {e.message} (line {e.lineno})") from e


def render(source: str, **context) -> tuple[str, list[tuple[int, int]]]:
    """Render a chat template; returns the text and the character ranges of its `{% generation %}` blocks."""
    try:
        raw = compile_template(source).render(**context)
    except jinja2.TemplateError as e:
        raise TemplateError(f"chat template error: {e}") from e
    if GEN_OPEN not in raw:
        return raw, []
    text, spans, stack = [], [], []
    pos = 0
    for ch in raw:
        if ch == GEN_OPEN:
            stack.append(pos)
        elif ch == GEN_CLOSE:
            spans.append((stack.pop(), pos))
        else:
            text.append(ch)
            pos += 1
    return "".join(text), sorted(spans)
