"""Engine: KV-cache decoding equals full recomputation, stopping (end-of-turn, stop strings, length), UTF-8-safe streaming,
seeds, batching and context-window management, on a tiny random Llama built in code."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chatloom import protocols
from chatloom.conversation import Conversation
from chatloom.engine import ContextWindowError, Engine, SamplingParams, TextStream
from chatloom.tokenizers import load_tokenizer

GREEDY = SamplingParams(max_tokens=16, temperature=0)


def make_tiny_model_dir(out, bundled_tokenizer_path, seed: int = 0):
    """A tiny random Llama with the bundled BPE and the chatml protocol, saved as a model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(str(bundled_tokenizer_path))
    protocols.get("chatml", tok)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512))
    model.save_pretrained(out)
    tok.save(out)
    (out / "chatloom.json").write_text(json.dumps({"protocol": "chatml"}))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_tokenizer_path):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), bundled_tokenizer_path)


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    return Engine.from_pretrained(tiny_model_dir)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy CPU two OpenMP threads wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ScriptedLM(torch.nn.Module):
    """A real (tiny) causal LM whose logits we control: step t of the reply emits `script[t]` (then `after`)."""

    def __init__(self, inner, script, after=None):
        super().__init__()
        self.inner, self.script, self.after = inner, list(script), after
        self.config = inner.config
        self.prompt_len = None

    @property
    def device(self):
        return self.inner.device

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, past_key_values=None, **kw):
        seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        out = self.inner(input_ids=input_ids, past_key_values=past_key_values, **kw)
        if seen == 0:
            self.prompt_len = input_ids.shape[1]
        step = seen + input_ids.shape[1] - self.prompt_len
        token = self.script[step] if step < len(self.script) else self.after
        if token is not None:
            forced = torch.full_like(out.logits, -1e9)
            forced[..., token] = 0
            out.logits = forced
        return out


def scripted(engine: Engine, script, after=None) -> Engine:
    return Engine(ScriptedLM(engine.model, script, after), engine.protocol)


CONVS = [Conversation.of("Hello there, how are you?"),
         Conversation.of("Hi", "Hello! How can I help?", "Explain a dict in one line.", system="You are terse."),
         Conversation.of("ünïcödé ☃ 日本語 🙂")]


def test_greedy_with_kv_cache_equals_full_recompute(engine):
    for conv in CONVS:
        [c] = engine.generate([conv], GREEDY)
        assert c.ids == engine.greedy_reference(conv, GREEDY.max_tokens)
        assert c.prompt_tokens == len(engine.protocol.prompt(conv))
        assert c.completion_tokens == len(c.ids) > 0


def test_lean_llama_decoder_equals_the_transformers_forward(engine):
    fast, slow = engine, Engine(engine.model, engine.protocol, fast=False)
    assert fast.decoder is not None and slow.decoder is None
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (24, 8, 16)]
    assert [c.ids for c in fast.generate(CONVS, params)] == [c.ids for c in slow.generate(CONVS, params)]
    sampled = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, seed=5)
    assert fast.generate(CONVS[:1], sampled)[0].ids == slow.generate(CONVS[:1], sampled)[0].ids


def test_left_padded_batch_equals_one_by_one(engine):
    batch = engine.generate(CONVS, GREEDY)
    single = [engine.generate([c], GREEDY)[0] for c in CONVS]
    assert [b.ids for b in batch] == [s.ids for s in single]
    assert len({len(engine.protocol.prompt(c)) for c in CONVS}) > 1  # the batch really was padded


def test_stops_at_end_of_turn(engine):
    eot = engine.protocol.end_of_turn_id
    words = engine.tokenizer.encode(" one two three")
    e = scripted(engine, [*words, eot], after=words[0])
    [c] = e.generate([CONVS[0]], SamplingParams(max_tokens=50, temperature=0))
    assert c.finish_reason == "stop"
    assert c.ids == [*words, eot] and c.completion_tokens == len(words) + 1
    assert c.text == " one two three"
    assert "".join(e.stream(CONVS[0], SamplingParams(max_tokens=50))) == " one two three"


def test_length_limit_when_the_model_never_stops(engine):
    word = engine.tokenizer.encode(" la")[0]
    e = scripted(engine, [], after=word)
    [c] = e.generate([CONVS[0]], SamplingParams(max_tokens=7, temperature=0.7, seed=3))
    assert (c.finish_reason, c.completion_tokens, c.text) == ("length", 7, " la" * 7)


def test_stop_string_cuts_the_reply_and_is_never_streamed(engine):
    text = "Sure. The answer is 4.\nUser: and more"
    e = scripted(engine, engine.tokenizer.encode(text), after=engine.protocol.end_of_turn_id)
    params = SamplingParams(max_tokens=100, temperature=0, stop=["\nUser:", "never"])
    [c] = e.generate([CONVS[0]], params)
    assert c.finish_reason == "stop" and c.text == "Sure. The answer is 4."
    deltas = list(e.stream(CONVS[0], params))
    assert "".join(deltas) == c.text and not any("User" in d for d in deltas)


def test_batch_rows_stop_independently(engine):
    eot = engine.protocol.end_of_turn_id
    short = scripted(engine, [engine.tokenizer.encode(" x")[0], eot])
    out = short.generate([CONVS[0], CONVS[1]], [SamplingParams(max_tokens=5, temperature=0),
                                                  SamplingParams(max_tokens=3, temperature=0)])
    assert [c.finish_reason for c in out] == ["stop", "stop"] and [c.text for c in out] == [" x", " x"]
    free = engine.generate(CONVS, [SamplingParams(max_tokens=n, temperature=0) for n in (3, 9, 5)])
    assert [c.completion_tokens for c in free] == [min(n, len(c.ids)) for n, c in zip((3, 9, 5), free, strict=True)]
    assert all(c.completion_tokens <= n for n, c in zip((3, 9, 5), free, strict=True))


def test_seed_makes_sampling_reproducible_and_top_k_1_is_greedy(engine):
    p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, top_k=50, repetition_penalty=1.1, seed=7)
    a, b = engine.generate([CONVS[1]], p)[0], engine.generate([CONVS[1]], p)[0]
    assert a.ids == b.ids
    others = {tuple(engine.generate([CONVS[1]], SamplingParams(max_tokens=16, seed=s))[0].ids) for s in range(4)}
    assert len(others) > 1
    k1 = engine.generate([CONVS[1]], SamplingParams(max_tokens=16, temperature=1.0, top_k=1, seed=1))[0]
    assert k1.ids == engine.generate([CONVS[1]], SamplingParams(max_tokens=16, temperature=0))[0].ids


def test_long_chat_drops_oldest_turns_but_keeps_the_system_message(engine):
    small = Engine(engine.model, engine.protocol, max_context=96)
    turns = []
    for i in range(12):
        turns += [f"question number {i} about sorting lists", f"answer number {i}: use sorted()"]
    conv = Conversation.of(*turns, "last question?", system="SYSTEM PROMPT")
    prompt, dropped = small.fit_prompt(conv, 16)
    text = small.tokenizer.decode(prompt)
    assert dropped > 0 and len(prompt) <= 96 - 16
    assert "SYSTEM PROMPT" in text and "last question?" in text and "question number 0 " not in text
    [c] = small.generate([conv], SamplingParams(max_tokens=16, temperature=0))
    assert c.dropped_messages == dropped and c.prompt_tokens + c.completion_tokens <= 96
    with pytest.raises(ContextWindowError, match="context window is 96"):
        small.generate([Conversation.of("word " * 400)], GREEDY)


def test_int8_weights_decode_like_fp32(engine):
    from chatloom.engine import quantize_weights

    int8 = Engine(quantize_weights(engine.model), engine.protocol)
    assert int8.decoder is None  # quantized layers go through the transformers forward
    a, b = int8.generate(CONVS, GREEDY), engine.generate(CONVS, GREEDY)
    same = sum(x == y for p, q in zip(a, b, strict=True) for x, y in zip(p.ids, q.ids, strict=False))
    assert all(c.completion_tokens > 0 for c in a) and same >= 0.5 * sum(len(c.ids) for c in b)


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffd"), max_size=40),
       st.integers(0, 2**32))
def test_streaming_never_splits_a_utf8_character(bundled_tokenizer_path, text, seed):
    tok = _tokenizer(bundled_tokenizer_path)
    stream = TextStream(tok)
    deltas = [stream.push(i) for i in tok.encode(text)] + [stream.finish()]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
    data = text.encode("utf-8")  # the same through arbitrary byte chunks
    rng, stream, deltas, pos = random.Random(seed), TextStream(tok, stop=["zz"]), [], 0
    while pos < len(data):
        step = rng.randint(1, 4)
        deltas.append(stream.push_bytes(data[pos:pos + step]))
        pos += step
    deltas.append(stream.finish())
    expected = text[:text.find("zz")] if "zz" in text else text
    assert "".join(deltas) == expected and not any("\ufffd" in d for d in deltas)


def test_engine_stream_of_multibyte_text(engine):
    text = "日本語 🙂 ünïcödé"
    e = scripted(engine, engine.tokenizer.encode(text), after=engine.protocol.end_of_turn_id)
    deltas = list(e.stream(CONVS[0], SamplingParams(max_tokens=100)))
    assert "".join(deltas) == text and len(deltas) > 3 and not any("\ufffd" in d for d in deltas)
    assert e.last_completion.finish_reason == "stop"


_TOKENIZERS = {}


def _tokenizer(path):
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(str(path))
    return _TOKENIZERS[path]
