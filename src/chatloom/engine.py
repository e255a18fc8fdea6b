"""The engine: sample an assistant turn from any causal LM, starting at `protocol.prompt(conv)`, until the end-of-turn token.

One decode loop serves everything (batch 1 streaming, batched `generate`, the server's continuous batching): a `Batch`
prefills prompts into a KV cache, then feeds back one token per row per step. Rows are left-padded, carry their own
sampling parameters, random generator and position ids, join a running batch between steps and leave it (their cache
rows are dropped) as soon as they stop; a row that fails ends alone.
Text comes out as deltas of an incremental UTF-8 decoder over token *bytes*, so a delta never holds half a character,
and text that could still become a stop string is held back until it cannot.
"""

from __future__ import annotations

import codecs
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .conversation import Conversation, Message
from .protocols import Protocol
from .protocols.reasoning import split_reasoning


class ContextWindowError(ValueError):
    """The conversation cannot fit the model's context window even after dropping old turns."""


@dataclass
class SamplingParams:
    """How to sample. temperature 0 (or top_k 1) is greedy; stop strings end the reply (they are not included)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] | str | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class Completion:
    """One generated assistant turn. `ids` are all generated ids (ending with the end-of-turn id when the model stopped
    by itself); `text` is their text without the end-of-turn token and cut before a stop string (a reasoning block
    included); `reasoning_tags` are the protocol's (None: it does not render reasoning), which `to_message` splits by."""

    text: str
    ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int = 0  # oldest turns left out to fit the context window
    reasoning_tags: tuple[str, str] | None = None  # the protocol's `reasoning_tags`

    def split(self) -> tuple[str | None, str]:
        """(reasoning or None, content) of the reply: the `<think>` block the model wrote, split off as the server
        does (`protocols.reasoning.split_reasoning`); a protocol without reasoning: (None, text)."""
        return split_reasoning(self.text, self.reasoning_tags)

    def to_message(self) -> Message:
        """The reply as the assistant message to send back: its reasoning in `reasoning_content`, the rest in `content`."""
        reasoning, content = self.split()
        return Message("assistant", content, reasoning_content=reasoning)


class TextStream:
    """Token ids in, text deltas out: never half a UTF-8 character, never the start of a possible stop string."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""  # all text decoded so far
        self.sent = 0  # characters already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        return self.push_bytes(self.tokenizer.token_bytes(token_id))

    def push_bytes(self, data: bytes) -> str:
        if self.stopped:
            return ""
        self.text += self.decoder.decode(data, final=False)
        if self.stop:
            search_from = max(0, self.sent - self.hold)
            hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True
                return self._emit(len(self.text))
        return self._emit(len(self.text) - self.hold)

    def finish(self) -> str:
        """End of generation: flush what was held back (an incomplete character becomes U+FFFD)."""
        if not self.stopped:
            self.text += self.decoder.decode(b"", final=True)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta = self.text[self.sent:upto]
        self.sent = upto
        return delta


@dataclass
class Request:
    """One row of a batch: its prompt, parameters, and where its text goes (`on_delta(text)`, `on_finish(completion)`
    or, if this row fails, `on_error(message)`; all called from the decoding thread). Setting `cancelled` ends the row
    at the next step (finish_reason "length")."""

    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None
    on_finish: Callable[[Completion], None] | None = None
    dropped_messages: int = 0
    max_new: int = 0  # 0: params.max_tokens; the batch clamps it to the context window when the row is admitted
    cancelled: bool = False
    on_error: Callable[[str], None] | None = None
    ids: list[int] = field(default_factory=list)
    completion: Completion | None = None
    error: BaseException | None = None  # why this row failed (its batch-mates are unaffected)


class Engine:
    """KV-cache sampling from `protocol.prompt(conv)` for any transformers causal LM (Llama-family models go through
    the lean `engine_llama.LlamaDecoder` unless `fast=False`).

    `Engine(model, ...)` changes the model it is given: it is put in eval mode, and with the fast decoder its q/k/v and
    gate/up `Linear` weights are replaced by views into fused tensors (same values, no copy). The model still computes
    the same outputs, but its parameters are no longer separate tensors: to keep training or saving a model as it was,
    give the engine a copy (`copy.deepcopy(model)`) or pass `fast=False`."""

    def __init__(self, model, protocol: Protocol, max_context: int | None = None, fast: bool = True,
                 quantize: str | None = None):
        from .engine_llama import QUANTIZE, LlamaDecoder

        if quantize not in (None, *QUANTIZE):
            raise ValueError(f"unknown quantization {quantize!r}; supported: {', '.join(QUANTIZE)}")
        if quantize and not (fast and LlamaDecoder.supports(model)):
            raise ValueError("quantize= needs the lean Llama decoder; for other models use quantize_weights(model)")
        self.model = model.eval()
        self.decoder = LlamaDecoder(model, quantize=quantize) if fast and LlamaDecoder.supports(model) else None
        self.protocol = protocol
        self.tokenizer = protocol.tokenizer
        config = getattr(model, "config", None)
        self.max_context = max_context or getattr(config, "max_position_embeddings", None) or 2048
        self.stop_ids = set(protocol.stop_ids)
        self.pad_id = next(iter(self.stop_ids))
        self.lock = threading.Lock()
        rows = getattr(config, "vocab_size", None)
        if rows is not None and rows < len(self.tokenizer):
            raise ValueError(f"model has {rows} output rows but the tokenizer has {len(self.tokenizer)} tokens "
                             f"(protocol {protocol.name} control tokens missing from the model?)")

    @classmethod
    def from_pretrained(cls, model_dir, protocol: Protocol | str | None = None, dtype=None, max_context: int | None = None,
                        quantize: str | None = None, fast: bool = True) -> Engine:
        """Load a model directory (HF format). `protocol`: a Protocol, a name, or None for `protocols.for_model(dir)`;
        `dtype`: e.g. "bfloat16" (about 1.7x faster decoding on AVX-512 bf16 CPUs); `quantize="int8"`: dynamic int8
        weights for the linear layers (CPU; a quarter of the fp32 weight bytes per token, small accuracy loss), inside
        the lean decoder for Llama-family models (per-channel scales), through the transformers forward otherwise;
        `quantize="int4"`: group-wise int4 weights with bfloat16 activations (Llama-family models only; see
        `chatloom.quant`)."""
        from transformers import AutoModelForCausalLM

        from . import model_meta, protocols
        from .tokenizers import load_tokenizer

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: no such model directory")
        if isinstance(protocol, str):
            protocol = protocols.get(protocol, load_tokenizer(model_dir))
        elif protocol is None:
            protocol = protocols.for_model(model_dir)
        if isinstance(dtype, str):
            dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}.get(dtype) or getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype or "auto")
        if model.get_input_embeddings().weight.shape[0] < len(protocol.tokenizer):
            from .train.models import end_of_turn_like, fit_vocab  # the one place vocabularies grow

            fit_vocab(model, len(protocol.tokenizer), end_of_turn_like(protocol, model))
        lean = None
        if quantize:
            from .engine_llama import QUANTIZE, LlamaDecoder

            if quantize not in QUANTIZE:
                raise ValueError(f"unknown quantization {quantize!r}; supported: {', '.join(QUANTIZE)}")
            if fast and LlamaDecoder.supports(model):
                lean = quantize  # quantized matrices inside the lean decoder
                if quantize == "int8":
                    model = model.float()  # dynamic int8 kernels take float32 activations
            elif quantize == "int8":
                model = quantize_weights(model, quantize)  # int8 Linears through the transformers forward
            else:
                raise ValueError(f"quantize={quantize!r} needs the lean Llama decoder (llama, mistral, qwen2 models; "
                                 f"fast=True); this is a {getattr(model.config, 'model_type', type(model).__name__)} model")
        engine = cls(model, protocol, max_context=max_context, fast=fast, quantize=lean)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        special = set(protocol.tokenizer.special_tokens.values())  # a default config's eos=2 may be an ordinary token
        engine.stop_ids |= {i for i in ([eos] if isinstance(eos, int) else eos or []) if i in special}
        engine.name = model_dir.name
        engine.meta = model_meta.read(model_dir)
        return engine

    name = "chatloom"
    meta: dict = {}

    # ------------------------------------------------------------------------------------------------ public API
    def generate(self, convs: Sequence[Conversation], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 batch_size: int = 16) -> list[Completion]:
        """Complete every conversation, `batch_size` at a time; `params` is shared or one per conversation."""
        params = params or SamplingParams()
        plist = [params] * len(convs) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(convs):
            raise ValueError(f"{len(convs)} conversations but {len(plist)} SamplingParams")
        requests = [self.request(c, p) for c, p in zip(convs, plist, strict=True)]
        for start in range(0, len(requests), batch_size):
            for _ in self.run(requests[start:start + batch_size]):
                pass
        return [r.completion for r in requests]

    def stream(self, conv: Conversation, params: SamplingParams | None = None) -> Iterator[str]:
        """Text deltas of one reply, as they are generated."""
        out: list[str] = []
        request = self.request(conv, params or SamplingParams(), on_delta=out.append)
        for _ in self.run([request]):
            if out:
                yield "".join(out)
                out.clear()
        if out:
            yield "".join(out)
        self.last_completion = request.completion

    def request(self, conv: Conversation, params: SamplingParams, on_delta=None, on_finish=None, *, on_error=None,
                fitted: tuple[list[int], int] | None = None) -> Request:
        """A Request for `conv`, fitted to the context window (raises ContextWindowError if it cannot fit); `fitted`:
        a `fit_prompt` result to reuse (several requests for one conversation)."""
        prompt, dropped = fitted or self.fit_prompt(conv, params.max_tokens)
        return Request(list(prompt), params, on_delta, on_finish, dropped, on_error=on_error)

    def fit_prompt(self, conv: Conversation, max_tokens: int) -> tuple[list[int], int]:
        """Prompt ids leaving room for the reply: drop the oldest turns (never the system message, never the last
        message) until the prompt leaves `min(max_tokens, half the window)` free."""
        budget = self.max_context - min(max_tokens, self.max_context // 2)
        messages = list(conv.messages)
        system = [messages.pop(0)] if messages and messages[0].role == "system" else []
        dropped = 0
        while True:
            ids = self.protocol.prompt(Conversation(system + messages, id=conv.id))
            if len(ids) <= budget:
                return ids, dropped
            if len(messages) <= 1:
                break
            messages.pop(0)
            dropped += 1
            while len(messages) > 1 and messages[0].role != "user":
                messages.pop(0)
                dropped += 1
        if len(ids) < self.max_context:
            return ids, dropped
        raise ContextWindowError(f"the prompt is {len(ids)} tokens even with only the system message and the last "
                                 f"message; the context window is {self.max_context} tokens")

    # ------------------------------------------------------------------------------------------------ the loop
    def batch(self) -> Batch:
        """An empty running batch: rows join it (`add`) and leave it as they finish (`step`); see `Batch`."""
        return Batch(self)

    def run(self, requests: Sequence[Request]) -> Iterator[int]:
        """Decode all requests as one batch; yields the number of active rows after each step. Sets `.completion`.
        A request that fails (its own parameters, callbacks or prompt) ends alone with `.error` set; its batch-mates
        finish normally. Afterwards the first such error is raised unless every failed request has an `on_error`."""
        batch = Batch(self)
        batch.add(requests)
        while batch.rows:
            batch.pick()
            yield len(batch.rows)  # before the next forward, so a stream hands out its text at once
            batch.feed()
        errors = [r.error for r in requests if r.error is not None and r.on_error is None]
        if errors:
            raise errors[0]

    def _backend(self, batch: int, capacity: int):
        if self.decoder is not None:
            return _LlamaBackend(self.decoder, self._rope_tables(), batch, capacity)
        return _HFBackend(self.model)

    def _rope_tables(self):
        if self._rope is None or self._rope[0].shape[0] < self.max_context:
            self._rope = self.decoder.rope_tables(self.max_context)
        return self._rope

    _rope = None

    def greedy_reference(self, conv: Conversation, max_tokens: int) -> list[int]:
        """Greedy decoding without a KV cache (the whole sequence every step): slow, for tests."""
        ids = self.protocol.prompt(conv)
        out: list[int] = []
        with torch.inference_mode():
            for _ in range(max_tokens):
                x = torch.tensor([ids + out], device=self.model.device)
                token = int(self.model(input_ids=x, use_cache=False).logits[0, -1].float().argmax())
                out.append(token)
                if token in self.stop_ids:
                    break
        return out


TRIM_COLUMNS = 64  # drop the cache's leading columns once this many hold no row's tokens (rows that left)


class Batch:
    """Rows decoding together on one KV cache, with continuous batching.

    `add(requests)` prefills the new rows' prompts (left-padded among themselves) in one forward and merges their cache
    into the running batch (left-padding whichever side is shorter), so they decode with the others from the next step.
    `step()` samples one token for every row, lets finished rows leave at once (their cache rows are dropped) and runs
    one forward for the rest. Every row carries its own position ids and attention-mask row, so a row that joined late
    decodes exactly as it would alone.

    Failures are contained: a row whose parameters, callbacks or prompt fail ends alone (its request gets `.error` and
    `on_error`); a failed prefill is retried row by row so only the culprit fails; a failure of the shared decoding
    forward ends every row, with that error. `add` and `step` never raise for a request's sake.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.rows: list[_Row] = []
        self.backend = None
        self.mask: torch.Tensor | None = None  # (B, W): 1 where a cache column holds one of the row's tokens
        self.positions: torch.Tensor | None = None  # (B, 1): the position of each row's next token
        self.logits: torch.Tensor | None = None  # (B, vocab): each row's next-token logits
        self.plain = True  # no padding and positions equal columns: the forward needs neither mask nor positions
        self.pending: list[int] | None = None  # tokens picked but not yet fed (between `pick` and `feed`)

    @property
    def can_join(self) -> bool:
        """Whether new rows can join now (always for the lean decoder; for transformers caches of plain layers)."""
        return not self.rows or getattr(self.backend, "mergeable", False)

    # ---------------------------------------------------------------------------------------------- rows join
    @torch.inference_mode()
    def add(self, requests: Sequence[Request]) -> None:
        """Prefill these requests and take them into the batch (they are sampled at the next `step`)."""
        self.feed()
        rows = []
        for request in requests:
            try:
                rows.append(_Row(request, self.engine))
            except Exception as e:
                _fail(request, e)
        if rows and not self.can_join:
            for row in rows:
                row.fail(RuntimeError("this model's cache cannot take rows into a running batch"))
            return
        if rows:
            self._join(rows)

    def _join(self, rows: list[_Row]) -> None:
        try:
            with self.engine.lock:
                backend, mask, positions, logits, plain = self._prefill(rows)
                if self.rows:
                    self._merge(backend, mask, positions, logits, rows)
                else:
                    self.backend, self.mask, self.positions, self.logits, self.plain = backend, mask, positions, logits, plain
        except Exception as e:
            if len(rows) == 1:
                rows[0].fail(e)
            else:  # find the culprit: each row on its own
                for row in rows:
                    self._join([row])
            return
        self.rows.extend(rows)

    def _prefill(self, rows: list[_Row]):
        engine = self.engine
        device = engine.model.device
        prompts = [row.request.prompt_ids for row in rows]
        width = max(map(len, prompts))
        padded = len(set(map(len, prompts))) > 1
        input_ids = torch.full((len(rows), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        room = 0 if self.rows else max(row.max_new for row in rows)  # a group that joins is copied into a new cache
        backend = engine._backend(len(rows), width + room)
        logits = backend.forward(input_ids, mask if padded else None, positions if padded else None)
        return backend, mask, mask.sum(-1, keepdim=True), logits, not padded

    def _merge(self, backend, mask, positions, logits, rows: list[_Row]) -> None:
        """Take a prefilled group into the running batch; nothing changes if this raises."""
        width = max(self.mask.shape[1], mask.shape[1])
        pad_self, pad_new = width - self.mask.shape[1], width - mask.shape[1]
        capacity = width + max(row.max_new - len(row.request.ids) for row in self.rows + rows)
        merged = self.backend.merged(backend, pad_self, pad_new, capacity)
        new_mask = torch.cat([torch.nn.functional.pad(self.mask, (pad_self, 0)), torch.nn.functional.pad(mask, (pad_new, 0))])
        new_positions = torch.cat([self.positions, positions])
        new_logits = torch.cat([self.logits, logits.to(self.logits.dtype)])
        self.backend, self.mask, self.positions, self.logits = merged, new_mask, new_positions, new_logits
        self.plain = bool(new_mask.all()) and bool((new_positions == width).all())

    # ---------------------------------------------------------------------------------------------- one step
    def step(self) -> list[Request]:
        """Sample one token for every row, retire finished rows, and run the forward for the others. Returns the
        requests that ended in this step (finished, cancelled or failed)."""
        ended = self.pick()
        return ended + self.feed()

    @torch.inference_mode()
    def pick(self) -> list[Request]:
        """The first half of a step: sample and hand out one token per row; finished rows leave at once. Returns the
        requests that ended. `feed()` then runs the forward (streaming callers hand out text between the two)."""
        ended = self.feed()  # a pick without its feed: finish that step first
        if not self.rows:
            return ended
        engine = self.engine
        tokens = self._sample(self.logits[:, :len(engine.tokenizer)].float())  # padded vocab rows never win
        keep = []
        for k, (row, token) in enumerate(zip(self.rows, tokens, strict=True)):
            done = True
            if token is not None:
                try:
                    done = row.push(token, engine.stop_ids)
                except Exception as e:  # e.g. its client's callback failed: this row only
                    row.fail(e)
            if done:
                ended.append(row.request)
            else:
                keep.append(k)
        try:
            if len(keep) < len(self.rows):
                with engine.lock:
                    self._retire(keep)
            self.pending = [tokens[k] for k in keep] if self.rows else None
        except Exception as e:
            ended += self._fail_all(e)
        return ended

    @torch.inference_mode()
    def feed(self) -> list[Request]:
        """The second half of a step: one forward for the tokens `pick()` chose. If the shared forward fails, every
        row ends with the error (returned)."""
        if self.pending is None:
            return []
        tokens, self.pending = self.pending, None
        try:
            with self.engine.lock:
                self._forward(tokens)
        except Exception as e:
            return self._fail_all(e)
        return []

    def _fail_all(self, error: BaseException) -> list[Request]:
        ended = [row.request for row in self.rows]
        for row in self.rows:
            row.fail(error)
        self._clear()
        return ended

    def _sample(self, logits: torch.Tensor) -> list[int | None]:
        if all(row.plain_greedy for row in self.rows):
            return logits.argmax(-1).tolist()
        tokens: list[int | None] = []
        for k, row in enumerate(self.rows):
            try:
                tokens.append(row.sample(logits[k]))
            except Exception as e:  # e.g. non-finite probabilities: this row only
                row.fail(e)
                tokens.append(None)
        return tokens

    def _retire(self, keep: list[int]) -> None:
        self.rows = [self.rows[k] for k in keep]
        if not self.rows:
            self._clear()
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.backend.select(index)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        dead = int(self.mask.any(0).int().argmax())  # leading columns that no remaining row uses
        if dead >= TRIM_COLUMNS and self.backend.trim(dead):
            self.mask = self.mask[:, dead:]
        self.plain = bool(self.mask.all()) and bool((self.positions == self.mask.shape[1]).all())

    def _forward(self, tokens: list[int]) -> None:
        tokens_t = torch.tensor(tokens, device=self.mask.device)[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
        if self.plain:
            self.logits = self.backend.forward(tokens_t, None, None)
        else:
            self.logits = self.backend.forward(tokens_t, self.mask, self.positions)
        self.positions = self.positions + 1

    def _clear(self) -> None:
        self.rows, self.backend, self.mask, self.positions, self.logits, self.plain = [], None, None, None, None, True
        self.pending = None


def _fail(request: Request, error: BaseException) -> None:
    """End a request with an error: set `.error` and tell its owner (whose own failure is ignored: it is gone)."""
    request.error = error
    if request.on_error is not None:
        try:
            request.on_error(f"{type(error).__name__}: {error}")
        except Exception:
            pass


class _HFBackend:
    """Decoding through the transformers forward with a DynamicCache (any causal LM)."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)

    @property
    def mergeable(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer and layer.is_initialized for layer in self.cache.layers)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def select(self, index: torch.Tensor) -> None:
        self.cache.batch_select_indices(index)

    def trim(self, columns: int) -> bool:
        """Drop `columns` leading cache columns; False (nothing dropped) when a layer cannot: a sliding-window layer
        (Gemma 3, Mistral) counts the columns it has seen and, once past its window, keeps only the last ones."""
        layers = self.cache.layers
        if any(getattr(layer, "cumulative_length", layer.keys.shape[-2]) != layer.keys.shape[-2] for layer in layers):
            return False
        for layer in layers:
            layer.keys, layer.values = layer.keys[:, :, columns:], layer.values[:, :, columns:]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length -= columns
        return True

    def merged(self, other: _HFBackend, pad_self: int, pad_other: int, capacity: int) -> _HFBackend:
        """A backend holding this cache's rows then `other`'s, each left-padded with zero columns to one width."""
        from torch.nn.functional import pad

        out = _HFBackend.__new__(_HFBackend)
        out.model = self.model
        out.cache = type(self.cache)(config=self.model.config)
        pairs = []
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            pairs.append((torch.cat([pad(mine.keys, (0, 0, pad_self, 0)), pad(theirs.keys, (0, 0, pad_other, 0))]),
                          torch.cat([pad(mine.values, (0, 0, pad_self, 0)), pad(theirs.values, (0, 0, pad_other, 0))])))
        for layer, (keys, values) in zip(out.cache.layers, pairs, strict=True):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        return out


class _LlamaBackend:
    """Decoding through LlamaDecoder with a preallocated cache: a buffer of `capacity` columns of which the window
    [lo, hi) is in use (rows that leave can free leading columns by moving `lo`)."""

    mergeable = True

    def __init__(self, decoder, tables, batch: int, capacity: int):
        self.decoder = decoder
        self.tables = tables
        self.buffers = decoder.new_cache(batch, capacity)
        self.views = self.buffers
        self.lo = self.hi = 0

    @property
    def room(self) -> int:
        return self.buffers[0][0].shape[2] - self.hi

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        b, t = input_ids.shape
        if t > self.room:  # never needed when capacities are computed right; kept so a miscount cannot corrupt
            self._rebuffer(self.hi - self.lo + t)
        start = self.hi - self.lo
        if position_ids is None:
            position_ids = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        mask = None
        if attention_mask is not None:
            keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, start + t)
            if t > 1:  # prefill: causal and not padding; a padding query sees itself so no row is all -inf
                causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
                causal = torch.cat([causal.new_ones((t, start)), causal], dim=1)
                eye = torch.cat([causal.new_zeros((t, start)), torch.eye(t, dtype=torch.bool, device=input_ids.device)], 1)
                mask = (keys & causal) | eye
            else:
                mask = keys
        logits = self.decoder.forward(input_ids, position_ids, self.views, start, mask, self.tables)
        self.hi += t
        return logits

    def select(self, index: torch.Tensor) -> None:
        self.buffers = [(k[index], v[index]) for k, v in self.buffers]
        self._view()

    def trim(self, columns: int) -> bool:
        self.lo += columns
        self._view()
        return True

    def _view(self) -> None:
        self.views = self.buffers if self.lo == 0 else [(k[:, :, self.lo:], v[:, :, self.lo:]) for k, v in self.buffers]

    def _rebuffer(self, capacity: int) -> None:
        width = self.hi - self.lo
        new = self.decoder.new_cache(self.buffers[0][0].shape[0], capacity)
        for (k, v), (nk, nv) in zip(self.buffers, new, strict=True):
            nk[:, :, :width], nv[:, :, :width] = k[:, :, self.lo:self.hi], v[:, :, self.lo:self.hi]
        self.buffers, self.lo, self.hi = new, 0, width
        self._view()

    def merged(self, other: _LlamaBackend, pad_self: int, pad_other: int, capacity: int) -> _LlamaBackend:
        """A backend holding this cache's rows then `other`'s, each left-padded with zero columns to one width."""
        width = self.hi - self.lo + pad_self
        mine, theirs = self.buffers[0][0].shape[0], other.buffers[0][0].shape[0]
        out = _LlamaBackend.__new__(_LlamaBackend)
        out.decoder, out.tables = self.decoder, self.tables
        out.buffers = []
        for (k, v), (ok, ov) in zip(self.buffers, other.buffers, strict=True):
            pair = []
            for a, b in ((k, ok), (v, ov)):
                buf = a.new_zeros((mine + theirs, a.shape[1], max(capacity, width), a.shape[3]))
                buf[:mine, :, pad_self:width] = a[:, :, self.lo:self.hi]
                buf[mine:, :, pad_other:width] = b[:, :, other.lo:other.hi]
                pair.append(buf)
            out.buffers.append(tuple(pair))
        out.views, out.lo, out.hi = out.buffers, 0, width
        return out


class _Row:
    """Decoding state of one request inside a batch. `max_new` is the one place the reply's length is clamped to the
    context window (the prompt plus the reply never exceed `engine.max_context`)."""

    def __init__(self, request: Request, engine: Engine):
        self.request = request
        p = request.params
        self.params = p
        prompt = len(request.prompt_ids)
        self.max_new = min(request.max_new or p.max_tokens, engine.max_context - prompt)
        if prompt == 0 or self.max_new < 1:
            raise ContextWindowError(f"the prompt is {prompt} tokens; the context window is {engine.max_context} tokens")
        request.max_new = self.max_new
        self.text = TextStream(engine.tokenizer, p.stop)
        self.reasoning_tags = getattr(engine.protocol, "reasoning_tags", None)
        self.plain_greedy = p.greedy and p.repetition_penalty == 1.0
        self.generator = None
        if p.seed is not None and not p.greedy:
            self.generator = torch.Generator().manual_seed(p.seed)
        self.seen = torch.tensor(request.prompt_ids, dtype=torch.long) if p.repetition_penalty != 1.0 else None

    def fail(self, error: BaseException) -> None:
        _fail(self.request, error)

    def sample(self, logits: torch.Tensor) -> int:
        p = self.params
        if self.seen is not None:
            seen = self.seen.to(logits.device)
            picked = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if p.greedy:
            return int(logits.argmax())
        logits = logits.double()  # a temperature like 1e-200 is 0 in float32
        overflowed = torch.isposinf(logits)
        if overflowed.any():  # a tiny repetition_penalty pushed logits to +inf: those tokens share the mass
            logits = torch.where(overflowed, 0.0, float("-inf")).double()
        logits = (logits - logits.max()) / p.temperature  # shifted first: a tiny temperature gives -inf, never NaN
        if p.top_k and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest set reaching top_p
            logits = logits.scatter(0, order[drop], float("-inf"))
        probs = logits.softmax(-1).cpu()
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def push(self, token: int, stop_ids: set[int]) -> bool:
        """Take one generated token; returns True when this row is finished."""
        request = self.request
        request.ids.append(token)
        if self.seen is not None:
            self.seen = torch.cat([self.seen, torch.tensor([token])])
        if token in stop_ids:
            return self._finish("stop")
        delta = self.text.push(token)
        if delta and request.on_delta:
            request.on_delta(delta)
        if self.text.stopped:
            return self._finish("stop")
        if request.cancelled or len(request.ids) >= self.max_new:
            return self._finish("length")
        return False

    def _finish(self, reason: str) -> bool:
        request = self.request
        delta = self.text.finish()
        if delta and request.on_delta:
            request.on_delta(delta)
        request.completion = Completion(self.text.text, list(request.ids), reason, len(request.prompt_ids),
                                        len(request.ids), request.dropped_messages, self.reasoning_tags)
        if request.on_finish:
            request.on_finish(request.completion)
        return True


def quantize_weights(model, scheme: str = "int8"):
    """Dynamic int8 quantization of every nn.Linear (weights int8, activations quantized on the fly), for CPU decoding."""
    import warnings

    if scheme != "int8":
        raise ValueError(f"unknown quantization {scheme!r}; supported: int8")
    if model.dtype != torch.float32:
        model = model.float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def with_reply(conv: Conversation, completion: Completion) -> Conversation:
    """The conversation with the generated assistant turn appended."""
    return replace(conv, messages=[*conv.messages, completion.to_message()], id="")
