"""Reversible escaping of control-token strings inside text.

Chat templates work on strings, so to render user text through a template without letting it become control tokens,
chatloom replaces every control-token string (and the escape character itself) in message text by a two-character
sentinel from Unicode's private-use planes, renders, splits the result on the control tokens the template placed, and
un-escapes the text between them. The same trick turns parsed ids back into a string that regexes can read safely.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ESCAPE = "\U0010fffd"
_CODE_BASE = 0xF0000


class Escaper:
    ESCAPE_CHAR = ESCAPE

    def __init__(self, controls: Iterable[str]):
        self.controls = sorted({c for c in controls if c}, key=len, reverse=True)
        self.table = {ESCAPE: ESCAPE + chr(_CODE_BASE)}
        for k, c in enumerate(self.controls, 1):
            self.table[c] = ESCAPE + chr(_CODE_BASE + k)
        self.reverse = {v: k for k, v in self.table.items()}
        self._find = re.compile("|".join(re.escape(c) for c in [*self.controls, ESCAPE]))
        self._back = re.compile(re.escape(ESCAPE) + "[\U000f0000-\U000fffff]")
        self.control_re = re.compile("|".join(re.escape(c) for c in self.controls)) if self.controls else None

    def escape(self, text: str) -> str:
        if ESCAPE not in text and not (self.control_re and self.control_re.search(text)):
            return text
        return self._find.sub(lambda m: self.table[m.group(0)], text)

    def unescape(self, text: str) -> str:
        if ESCAPE not in text:
            return text
        return self._back.sub(lambda m: self.reverse[m.group(0)], text)

    def split(self, text: str) -> list[tuple[str, str, int]]:
        """An escaped string -> [("text"|"token", value, start offset)], control tokens as found in the string."""
        out, pos = [], 0
        if self.control_re is not None:
            for m in self.control_re.finditer(text):
                if m.start() > pos:
                    out.append(("text", text[pos:m.start()], pos))
                out.append(("token", m.group(0), m.start()))
                pos = m.end()
        if pos < len(text):
            out.append(("text", text[pos:], pos))
        return out
