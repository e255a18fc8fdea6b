"""The engine: sample an assistant turn from any causal LM, starting at `protocol.prompt(conv)`, until the end-of-turn token.

One decode loop serves everything (batch 1 streaming, batched `generate`, the server's batches): the prompt is prefilled
once into a KV cache, then one token per row per step is fed back. Rows of a batch are left-padded, carry their own
sampling parameters and random generator, and leave the batch (their cache rows are dropped) as soon as they stop.
Text comes out as deltas of an incremental UTF-8 decoder over token *bytes*, so a delta never holds half a character,
and text that could still become a stop string is held back until it cannot.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .conversation import Conversation, Message
from .protocols import Protocol


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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class Completion:
    """One generated assistant turn. `ids` are all generated ids (ending with the end-of-turn id when the model stopped
    by itself); `text` is their text without the end-of-turn token and cut before a stop string."""

    text: str
    ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int = 0  # oldest turns left out to fit the context window

    def to_message(self) -> Message:
        return Message("assistant", self.text)


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
    """One row of a batch: its prompt, parameters, and where its text goes (`on_delta(text)` and `on_finish(completion)`,
    called from the decoding thread). Setting `cancelled` ends the row at the next step (finish_reason "length")."""

    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None
    on_finish: Callable[[Completion], None] | None = None
    dropped_messages: int = 0
    max_new: int = 0  # max_tokens after fitting the context window
    cancelled: bool = False
    ids: list[int] = field(default_factory=list)
    completion: Completion | None = None


class Engine:
    """KV-cache sampling from `protocol.prompt(conv)` for any transformers causal LM (Llama-family models go through
    the lean `engine_llama.LlamaDecoder` unless `fast=False`).

    `Engine(model, ...)` changes the model it is given: it is put in eval mode, and with the fast decoder its q/k/v and
    gate/up `Linear` weights are replaced by views into fused tensors (same values, no copy). The model still computes
    the same outputs, but its parameters are no longer separate tensors: to keep training or saving a model as it was,
    give the engine a copy (`copy.deepcopy(model)`) or pass `fast=False`."""

    def __init__(self, model, protocol: Protocol, max_context: int | None = None, fast: bool = True):
        from .engine_llama import LlamaDecoder

        self.model = model.eval()
        self.decoder = LlamaDecoder(model) if fast and LlamaDecoder.supports(model) else None
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
        weights for the linear layers (CPU; a quarter of the fp32 weight bytes per token, small accuracy loss)."""
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
            from .train.models import fit_vocab  # the one place vocabularies grow (new rows = mean of the old ones)

            fit_vocab(model, len(protocol.tokenizer))
        if quantize:
            model = quantize_weights(model, quantize)
        engine = cls(model, protocol, max_context=max_context, fast=fast)
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

    def request(self, conv: Conversation, params: SamplingParams, on_delta=None, on_finish=None) -> Request:
        """A Request for `conv`, fitted to the context window (raises ContextWindowError if it cannot fit)."""
        prompt, dropped = self.fit_prompt(conv, params.max_tokens)
        return Request(prompt, params, on_delta, on_finish, dropped,
                       max_new=min(params.max_tokens, self.max_context - len(prompt)))

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
    @torch.inference_mode()
    def run(self, requests: Sequence[Request]) -> Iterator[int]:
        """Decode all requests as one batch; yields the number of active rows after each step. Sets `.completion`."""
        with self.lock:
            yield from self._run(list(requests))

    def _run(self, requests: list[Request]) -> Iterator[int]:
        device = self.model.device
        rows = [_Row(r, self.tokenizer) for r in requests]
        width = max(len(r.prompt_ids) for r in requests)
        padded = len({len(r.prompt_ids) for r in requests}) > 1
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(requests):
            input_ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.decoder is not None:
            backend = _LlamaBackend(self.decoder, len(rows), width + max(row.max_new for row in rows))
        else:
            backend = _HFBackend(self.model)
        logits = backend.forward(input_ids, mask if padded else None, positions if padded else None)
        active = list(range(len(rows)))
        vocab = len(self.tokenizer)
        positions = mask.sum(-1, keepdim=True)  # next position of each row
        while True:
            tokens = self._sample(logits[:, :vocab].float(), [rows[i] for i in active])  # padded vocab rows never win
            keep = [k for k, i in enumerate(active) if not rows[i].push(tokens[k], self.stop_ids)]
            yield len(keep)
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                backend.select(index)
                tokens = [tokens[k] for k in keep]
                mask, positions = mask[index], positions[index]
                active = [active[k] for k in keep]
            tokens_t = torch.tensor(tokens, device=device)[:, None]
            if padded:
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                logits = backend.forward(tokens_t, mask, positions)
                positions = positions + 1
            else:
                logits = backend.forward(tokens_t, None, None)

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        if all(r.plain_greedy for r in rows):
            return logits.argmax(-1).tolist()
        return [r.sample(logits[k]) for k, r in enumerate(rows)]

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


class _HFBackend:
    """Decoding through the transformers forward with a DynamicCache (any causal LM)."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def select(self, index: torch.Tensor) -> None:
        self.cache.batch_select_indices(index)


class _LlamaBackend:
    """Decoding through LlamaDecoder with a preallocated cache of `length` columns."""

    def __init__(self, decoder, batch: int, length: int):
        self.decoder = decoder
        self.cache = decoder.new_cache(batch, length)
        self.tables = decoder.rope_tables(length)
        self.filled = 0

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        b, t = input_ids.shape
        start = self.filled
        if position_ids is None:
            position_ids = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        mask = None
        if attention_mask is not None:
            keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, start + t)
            if t > 1:  # prefill: causal and not padding; a padding query sees itself so no row is all -inf
                causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
                mask = (keys & causal) | torch.eye(t, dtype=torch.bool, device=input_ids.device)
            else:
                mask = keys
        logits = self.decoder.forward(input_ids, position_ids, self.cache, start, mask, self.tables)
        self.filled += t
        return logits

    def select(self, index: torch.Tensor) -> None:
        self.cache = [(k[index], v[index]) for k, v in self.cache]


class _Row:
    """Decoding state of one request inside the loop."""

    def __init__(self, request: Request, tokenizer):
        self.request = request
        p = request.params
        self.params = p
        self.text = TextStream(tokenizer, p.stop)
        self.max_new = request.max_new or p.max_tokens
        self.plain_greedy = p.greedy and p.repetition_penalty == 1.0
        self.generator = None
        if p.seed is not None and not p.greedy:
            self.generator = torch.Generator().manual_seed(p.seed)
        self.seen = torch.tensor(request.prompt_ids, dtype=torch.long) if p.repetition_penalty != 1.0 else None

    def sample(self, logits: torch.Tensor) -> int:
        p = self.params
        if self.seen is not None:
            seen = self.seen.to(logits.device)
            picked = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if p.greedy:
            return int(logits.argmax())
        logits = logits / p.temperature
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
                                        len(request.ids), request.dropped_messages)
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
