"""`chatloom chat`: talk to a model in the terminal. Replies stream as they are sampled; the conversation is multi-turn.

A model whose protocol renders reasoning (`protocol.reasoning_tags`) writes a `<think>` block first: it is shown dimmed
before the answer and kept in the history as the turn's `reasoning_content` (the rest is its `content`), split as the
server splits it (`protocols.reasoning`), so the next turn renders it as the template does, not as text of the answer.

Commands: `/system TEXT` (set the system message), `/reset` (forget the turns), `/save FILE` (write the conversation as
one Conversation JSONL record), `/tokens` (the token view of the conversation so far), `/help`, `/quit`. Ctrl+C stops
the reply being generated.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from ..conversation import Conversation, Message, save
from ..engine import ContextWindowError, Engine, SamplingParams
from ..protocols.reasoning import ReasoningSplitter

HELP = ("/system TEXT  set the system message · /reset  start over · /save FILE  write the conversation (JSONL) · "
        "/tokens  show the conversation as tokens · /quit")


class ChatSession:
    """The state of a terminal chat: system message, turns, and the commands that act on them."""

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None,
                 out=None, console: Console | None = None):
        self.engine, self.params, self.system = engine, params, system
        self.turns: list[Message] = []
        self.out = out or sys.stdout
        self.console = console or Console(file=self.out, highlight=False)

    def conversation(self) -> Conversation:
        messages = ([Message("system", self.system)] if self.system else []) + self.turns
        return Conversation(messages)

    def handle(self, line: str) -> bool:
        """One line of input; returns False when the session should end."""
        line = line.rstrip("\n")
        if not line.strip():
            return True
        if line.startswith("/"):
            return self.command(line)
        self.turns.append(Message("user", line))
        self.reply()
        return True

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/system":
            self.system = arg or None
            self.say(f"system message {'set' if arg else 'cleared'}")
        elif name == "/reset":
            self.turns = []
            self.say("conversation reset")
        elif name == "/save":
            if not arg:
                self.say("usage: /save FILE")
            elif not self.turns:
                self.say("nothing to save yet")
            else:
                save([self.conversation()], Path(arg))
                self.say(f"saved {len(self.conversation().messages)} messages to {arg}")
        elif name == "/tokens":
            self.show_tokens()
        else:
            self.say(f"unknown command {name}; {HELP}")
        return True

    def show_tokens(self):
        from ..protocols import view

        if not self.turns:
            self.say("no messages yet")
            return
        conv = self.conversation()
        self.console.print(view.to_rich(conv, self.engine.protocol.render(conv), self.engine.protocol))

    def reply(self):
        conv = self.conversation()
        self.out.write("assistant> ")
        self.out.flush()
        tags = getattr(self.engine.protocol, "reasoning_tags", None)
        shown = _Shown(self, ReasoningSplitter(tags) if tags else None)
        stream = self.engine.stream(conv, self.params)
        try:
            for delta in stream:
                shown.push(delta)
        except ContextWindowError as e:
            self.turns.pop()
            self.out.write("\n")
            self.say(f"error: {e}")
            return
        except KeyboardInterrupt:  # Ctrl+C stops this reply, not the session
            stream.close()
            reasoning, content = shown.finish()
            self.out.write("\n")
            self.say("[interrupted]")
            if content.strip() or (reasoning or "").strip():
                self.turns.append(Message("assistant", content, reasoning_content=reasoning))
            else:
                self.turns.pop()
            return
        shown.finish()
        completion = self.engine.last_completion
        self.out.write("\n")
        note = f"[{completion.completion_tokens} tokens, {completion.finish_reason}"
        if completion.dropped_messages:
            note += f", {completion.dropped_messages} oldest messages left out to fit the context"
        self.say(note + "]")
        self.turns.append(completion.to_message())

    def say(self, text: str):
        self.console.print(text, style="dim", markup=False)


class _Shown:
    """Writes one streamed reply: its reasoning dimmed as it comes, then (on a new line) its content."""

    def __init__(self, session: ChatSession, splitter: ReasoningSplitter | None):
        self.session, self.splitter = session, splitter
        self.text: list[str] = []  # everything streamed (a protocol without reasoning: all of it is content)
        self.in_reasoning = False

    def push(self, delta: str) -> None:
        self.text.append(delta)
        self._show(*(self.splitter.push(delta) if self.splitter else ("", delta)))

    def finish(self) -> tuple[str | None, str]:
        """Flush what the splitter held back; (reasoning or None, content) of what was streamed."""
        if not self.splitter:
            return None, "".join(self.text)
        self._show(*self.splitter.finish())
        return self.splitter.reasoning, self.splitter.content

    def _show(self, reasoning: str, content: str) -> None:
        out = self.session.out
        if reasoning:
            self.in_reasoning = True
            self.session.console.print(reasoning, style="dim", end="", markup=False, highlight=False, soft_wrap=True)
        if content:
            if self.in_reasoning:
                out.write("\n")
                self.in_reasoning = False
            out.write(content)
        out.flush()


def run(engine: Engine, params: SamplingParams, system: str | None = None, stdin=None) -> ChatSession:
    stdin = stdin or sys.stdin
    session = ChatSession(engine, params, system)
    interactive = stdin.isatty()
    session.say(f"chatloom chat · {engine.name} · protocol {engine.protocol.name} · {HELP}")
    while True:
        if interactive:
            session.out.write("you> ")
            session.out.flush()
        line = stdin.readline()
        if not line:
            break
        if not session.handle(line):
            break
    return session
