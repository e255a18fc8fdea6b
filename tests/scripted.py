"""A scripted model for tests: a real tiny Llama whose output head is forced, per row and per step, to tokens we choose.

Stopping, stop strings, streaming and the server's accounting are only testable against replies whose tokens are known.
`scripted(engine, reply)` copies the engine's model and puts two hooks on the copy's own modules, which both decoding
paths call: the input embedding (it sees every token fed to the model) and `lm_head` (its output is the logits). The lean
Llama decoder (`engine_llama.py`, `fast=True`) and the transformers forward (`fast=False`) therefore run unchanged, with
their own KV caches, padding and row selection; only the logits of the last position are replaced by -1e9 everywhere but
the scripted token (so greedy decoding, sampling at any temperature, top-k/top-p and repetition penalties all pick it).

Each row's script is chosen at prefill from its prompt (`reply` is a list of ids for every row, or a function of the
decoded prompt text), and each row advances one token per forward. Rows that join a running batch (the server's
continuous batching) are prefilled on their own and then decode after the running rows. When the engine drops finished
rows, the hook works out which rows are left from the tokens fed back (each must be the token it forced on that row one
step earlier), and fails loudly if that is ambiguous or if a fed-back token is not the one the model emitted.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import pytest

from chatloom.engine import Engine

FORCED = -1e9


class _Row:
    """One scripted row: its script, how many tokens were forced on it, and the last one (None: not forced)."""

    def __init__(self, script: list[int], after: int | None):
        self.script, self.after, self.emitted, self.last = script, after, 0, None

    def next_token(self) -> int | None:
        return self.script[self.emitted] if self.emitted < len(self.script) else self.after

    def future(self) -> tuple:
        """What this row will be forced to emit from now on (rows with the same future are interchangeable)."""
        return tuple(self.script[self.emitted:]), self.after


class Script:
    """The two hooks and the per-row state of one scripted model."""

    def __init__(self, model, tokenizer, stop_ids: set[int], reply: Sequence[int] | Callable[[str], Sequence[int]],
                 after: int | None = None, delay: float = 0.0):
        self.tokenizer, self.stop_ids, self.reply, self.after, self.delay = tokenizer, set(stop_ids), reply, after, delay
        self.rows: list[_Row] = []  # the rows that may still be decoding, in the engine's row order
        self.joining: list[list[int]] | None = None  # prompts of a prefill whose logits come next
        model.get_input_embeddings().register_forward_pre_hook(self._inputs)
        model.get_output_embeddings().register_forward_hook(self._logits)

    def script_for(self, prompt_ids: list[int]) -> list[int]:
        if callable(self.reply):
            return list(self.reply(self.tokenizer.decode(prompt_ids)))
        return list(self.reply)

    # ---------------------------------------------------------------------------------------------------- hooks
    def _inputs(self, module, args):
        ids = args[0]
        if ids.shape[1] > 1:  # a prefill of rows that start (or join a running batch), or a full-sequence forward
            self.joining = [self._unpad(row) for row in ids.tolist()]
            return
        self._follow([int(t) for t in ids[:, 0].tolist()])

    def _logits(self, module, args, out):
        if out.dim() == 3 and out.shape[1] != 1:
            self.joining = None
            return None  # logits of every position (a loss, a reference forward): left alone
        if self.joining is not None:  # the engine puts rows that join after the running ones
            rows = [_Row(self.script_for(p), self.after) for p in self.joining]
            self.rows, self.joining = self.rows + rows, None
        else:
            rows = self.rows
        if len(rows) != out.shape[0]:
            raise AssertionError(f"{out.shape[0]} rows of logits for {len(rows)} scripted rows")
        forced = out.clone()
        for r, row in enumerate(rows):
            token = row.next_token()
            row.emitted, row.last = row.emitted + 1, token
            if token is not None:
                forced[r] = FORCED
                forced[r, ..., token] = 0.0
        if self.delay:
            time.sleep(self.delay)
        return forced

    # ---------------------------------------------------------------------------------------------------- rows
    def _unpad(self, row: list[int]) -> list[int]:
        start = 0
        while start < len(row) - 1 and row[start] in self.stop_ids:  # left padding uses a stop id
            start += 1
        return row[start:]

    def _follow(self, fed: list[int]) -> None:
        """Which rows are still decoding, given the tokens fed back in row order: an order-preserving choice of rows
        whose last forced token is the one fed back (a row that was forced a stop id has ended). Rows that ended
        without a stop id (length, stop string, a cancelled client, a finished batch) drop out here."""
        alive = [row for row in self.rows if row.last is None or row.last not in self.stop_ids]
        keep, futures = None, set()
        for choice in self._choices(alive, fed, 0, 0, []):
            futures.add(tuple(row.future() for row in choice))
            if len(futures) > 1:
                raise AssertionError(f"cannot tell which rows are left from the fed-back tokens {fed}; script "
                                     "distinct tokens for rows that may finish at different steps")
            keep = keep or choice
        if keep is None:
            raise AssertionError(f"fed back {fed}, but the model emitted {[row.last for row in alive]} on its rows")
        self.rows = keep

    def _choices(self, alive, fed, i, j, chosen):
        """Order-preserving choices of len(fed) rows from `alive` whose last forced token equals the token fed back."""
        if j == len(fed):
            yield list(chosen)
            return
        for k in range(i, len(alive) - (len(fed) - j) + 1):
            row = alive[k]
            if row.last is None or row.last == fed[j]:
                chosen.append(row)
                yield from self._choices(alive, fed, k + 1, j + 1, chosen)
                chosen.pop()


def scripted(engine: Engine, reply: Sequence[int] | Callable[[str], Sequence[int]], *, after: int | None = None,
             fast: bool = True, delay: float = 0.0, max_context: int | None = None) -> Engine:
    """An Engine over a copy of `engine.model` whose replies follow `reply` (ids for every row, or a function of the
    decoded prompt text); `after`: the token forced once a script is used up (None: the model's own choice);
    `fast`: the lean Llama decoder (True) or the transformers forward (False); `delay`: seconds per step."""
    model = copy.deepcopy(engine.model)
    e = Engine(model, engine.protocol, max_context=max_context or engine.max_context, fast=fast)
    if (e.decoder is not None) != fast:
        raise AssertionError(f"asked for fast={fast} but the engine chose {'the lean' if e.decoder else 'the transformers'} path")
    e.stop_ids = set(engine.stop_ids)
    e.name = getattr(engine, "name", "scripted")
    e.script = Script(model, engine.tokenizer, e.stop_ids, reply, after, delay)
    return e


def by_prompt(tokenizer, table: dict[str, str | Sequence[int]], end: int | None = None,
              default: str | Sequence[int] | None = None) -> Callable[[str], list[int]]:
    """A reply function: the entry whose key occurs in the prompt text (the last such key in the prompt wins, so a
    chat's newest user turn decides); strings are tokenized, and `end` (e.g. the end-of-turn id) is appended."""
    def reply(prompt: str) -> list[int]:
        hits = [(prompt.rfind(k), k) for k in table if k in prompt]
        if hits:
            value = table[max(hits)[1]]
        elif default is not None:
            value = default
        else:
            raise AssertionError(f"no scripted reply for the prompt {prompt!r}")
        ids = tokenizer.encode(value) if isinstance(value, str) else list(value)
        return ids + ([end] if end is not None else [])

    return reply


#: pytest parameters for `fast`: both decoding paths, the lean Llama decoder and the transformers forward.
PATHS = [pytest.param(True, id="lean"), pytest.param(False, id="transformers")]
