"""What every protocol is: a conversation laid out as template text and contents, encoded by the one encoder.

A protocol only has to say how a conversation is laid out (`layout`: the template text between message contents, see
encoder.py) and how to read ids back (`parse`). Turning a layout into ids, loss mask and message index is done by one
encoder for every protocol and every path, so there is one definition of which token belongs to which message and which
is supervised:

- ids equal the tokenizer's encoding of the rendered text split at the control tokens the protocol placed (text is
  encoded with special-token parsing off: user text never becomes a control token);
- **a token is supervised iff it contains a byte of a supervised character** (the content of a trained assistant
  message as the template renders it), and so is the end-of-turn token that closes such a message. A token that
  straddles a header and a reply (BPE merging the header's newline with a reply that starts with whitespace) is
  therefore supervised, and so are all the byte tokens of a reply's last character;
- template-injected text (BOS, a default system prompt, the generation prompt) belongs to no message (index -1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..conversation import Conversation
from ..tokenizers import Tokenizer

NO_MESSAGE = -1


@dataclass(slots=True)
class Part:
    """A piece of the rendered conversation: either `text` or a control `token`, from message `message` (-1: none)."""

    text: str | None = None
    token: str | None = None
    message: int = NO_MESSAGE
    supervised: bool = False


class Rendered:
    """Token ids, 0/1 loss mask and, per token, the index of the message it came from (-1 for BOS / prompt).

    The encoder makes the mask as `bytes` (one byte per token: `mask_bytes`, what training and data statistics read)
    and lists it on the first read of `mask`; once listed, the list is the mask (a caller may edit it). The message
    index is held as runs (`runs`: message, count, message, count, ...) until it is first read: training and data
    statistics never read it, views do."""

    __slots__ = ("ids", "_mask", "_mask_bytes", "_index", "_runs")
    __hash__ = None

    def __init__(self, ids: list[int], mask: list[int] | bytes, message_index: list[int] | None = None, *,
                 runs: list[int] | None = None):
        if (message_index is None) == (runs is None):
            raise TypeError("Rendered needs either message_index or runs")
        self.ids = ids
        self.mask = mask
        self._index = message_index
        self._runs = runs

    @property
    def mask(self) -> list[int]:
        if self._mask is None:
            self._mask, self._mask_bytes = list(self._mask_bytes), None
        return self._mask

    @mask.setter
    def mask(self, value: list[int] | bytes) -> None:
        if isinstance(value, bytes):
            self._mask, self._mask_bytes = None, value
        else:
            self._mask, self._mask_bytes = value, None

    @property
    def mask_bytes(self) -> bytes:
        """The mask as one byte per token (no list made when the encoder's bytes are still held)."""
        return self._mask_bytes if self._mask is None else bytes(self._mask)

    @property
    def message_index(self) -> list[int]:
        if self._index is None:
            runs, out = self._runs, []
            for i in range(0, len(runs), 2):
                out += [runs[i]] * runs[i + 1]
            self._index, self._runs = out, None
        return self._index

    @message_index.setter
    def message_index(self, value: list[int]) -> None:
        self._index, self._runs = value, None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Rendered):
            return NotImplemented
        return (self.ids == other.ids and self.mask_bytes == other.mask_bytes
                and self.message_index == other.message_index)

    def __repr__(self) -> str:
        return f"Rendered(ids={self.ids!r}, mask={self.mask!r}, message_index={self.message_index!r})"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_supervised(self) -> int:
        return self.mask_bytes.count(1) if self._mask is None else sum(self._mask)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(start, end) token range of each message, in message order."""
        out: dict[int, list[int]] = {}
        for t, m in enumerate(self.message_index):
            if m >= 0:
                out.setdefault(m, [t, t + 1])[1] = t + 1
        return [tuple(out[m]) for m in sorted(out)]


class ProtocolError(ValueError):
    """Ids that do not follow the protocol, or a protocol that cannot be used with a tokenizer."""


class Protocol:
    """Base class: subclasses define `layout`, `parse`, the control tokens, the end-of-turn token and `escaper` (the
    escape.Escaper of their control tokens, which splits template text on them)."""

    name: str = ""
    control_tokens: tuple[str, ...] = ()
    end_of_turn: str = ""
    bos_tokens: tuple[str, ...] = ()  # tokens that, leading a conversation, start the document (message index -1)
    train_reasoning: bool = True  # supervise assistant `reasoning_content` (off: its tokens stay in ids, not in the
    # mask; the block's tags stay supervised, so the model still learns to open and close it: encoder.py)
    reasoning_tags: tuple[str, str] | None = None  # text written before / after an assistant's reasoning (`<think>\n`,
    # `\n</think>\n\n`), None when the protocol does not render reasoning (reasoning.py splits replies with them)

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        added = tokenizer.add_special_tokens([t for t in self.control_tokens if t])
        self.added_tokens = added
        ids = {t: tokenizer.token_id(t) for t in self.control_tokens if t}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ProtocolError(f"{self.name}: tokenizer {tokenizer.name} has no ids for control tokens {missing}")
        clash = {}
        for t, i in ids.items():
            if i in clash and clash[i] != t:
                raise ProtocolError(f"{self.name}: control tokens {clash[i]!r} and {t!r} share id {i}")
            clash[i] = t
        self._encoder = None

    # --------------------------------------------------------------------------------------------- to be defined
    def layout(self, conv: Conversation, add_generation_prompt: bool = False):
        """The conversation as an encoder.Layout: template text between message contents."""
        raise NotImplementedError

    def parse(self, ids: Sequence[int]) -> Conversation:
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------- shared
    @property
    def encoder(self):
        """The one encoder (layouts -> ids, mask, message index), built on first use."""
        if self._encoder is None:
            from .encoder import Encoder

            self._encoder = Encoder(self.tokenizer, self.escaper, self.end_of_turn, self.bos_tokens, self.name)
        return self._encoder

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.token_id(self.end_of_turn)

    @property
    def stop_ids(self) -> list[int]:
        """Ids at which generation stops: the end-of-turn token (and EOS when it differs)."""
        ids = [self.end_of_turn_id]
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos not in ids:
            ids.append(eos)
        return ids

    def render(self, conv: Conversation) -> Rendered:
        return self.render_batch([conv])[0]

    def render_batch(self, convs: Sequence[Conversation], add_generation_prompt: bool = False,
                     workers: int = 1) -> list[Rendered]:
        """Render many conversations at once: all their text goes to the tokenizer in one batch (each distinct text
        once). `workers` > 1 encodes it on that many threads (tiktoken releases the GIL; batches under 64k characters
        stay on one): worth it only on otherwise idle cores, see bench/protocol.py."""
        return self.encoder.encode([self.layout(c, add_generation_prompt) for c in convs], workers)

    def prompt(self, conv: Conversation) -> list[int]:
        """The conversation so far plus the assistant header: the context the engine samples from."""
        return self.render_batch([conv], add_generation_prompt=True)[0].ids

    def parts(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Part]:
        """The rendered conversation as parts (text or control token, message, supervised), for views and debugging."""
        return self.encoder.parts(self.layout(conv, add_generation_prompt))

    def text(self, conv: Conversation, add_generation_prompt: bool = False) -> str:
        """The rendered conversation as one string (what a chat template would produce)."""
        return self.encoder.text(self.layout(conv, add_generation_prompt))

    # --------------------------------------------------------------------------------------------- parsing helpers
    def split_control(self, ids: Sequence[int]) -> list[tuple[str, str]]:
        """Ids -> [("token", "<|im_start|>"), ("text", "user\\n..."), ...]: control tokens apart, text decoded."""
        by_id = {i: t for t, i in self.tokenizer.special_tokens.items()}
        out: list[tuple[str, str]] = []
        run: list[int] = []
        for i in ids:
            if i in by_id:
                if run:
                    out.append(("text", self.tokenizer.decode(run)))
                    run = []
                out.append(("token", by_id[i]))
            else:
                if not 0 <= i < len(self.tokenizer):
                    raise ProtocolError(f"{self.name}: id {i} is outside the vocabulary")
                run.append(i)
        if run:
            out.append(("text", self.tokenizer.decode(run)))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "control_tokens": {t: self.tokenizer.token_id(t) for t in self.control_tokens if t},
                "end_of_turn": self.end_of_turn, "added_tokens": list(self.added_tokens)}
