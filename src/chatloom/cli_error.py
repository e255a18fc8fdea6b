"""The one way every `chatloom` command reports a user's mistake: `error: <message>` on stderr, then exit code 2.

Never wrapped to the terminal's width (a file path or a `file:line: field` stays one string a user can copy and a
script can match) and never read as rich markup (a message quoting a user's `[bold]` prints it as typed). Raises
SystemExit rather than typer's Exit, so this module stays below the CLI layer (tests/test_layering.py) and every
sub-command module can share it without importing `chatloom.cli`.
"""

from __future__ import annotations

from typing import NoReturn

from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True, soft_wrap=True)


def fail(message: object, code: int = 2) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False)
    raise SystemExit(code)
