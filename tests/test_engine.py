"""Engine: KV-cache decoding equals full recomputation, stopping (end-of-turn, stop strings, length), UTF-8-safe streaming,
seeds, batching and context-window management, on a tiny random Llama built in code. Every stopping and streaming test
runs on both decoding paths (the lean Llama decoder and the transformers forward) with a scripted copy of that model
(tests/scripted.py): its replies are known token by token, so finish reasons and token counts are checked exactly."""

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

from .scripted import PATHS, by_prompt, scripted

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


CONVS = [Conversation.of("Hello there, how are you?"),
         Conversation.of("Hi", "Hello! How can I help?", "Explain a dict in one line.", system="You are terse."),
         Conversation.of("ünïcödé ☃ 日本語 🙂")]


def path_engine(engine: Engine, fast: bool) -> Engine:
    e = engine if fast else Engine(engine.model, engine.protocol, fast=False)
    assert (e.decoder is not None) == fast
    return e


@pytest.mark.parametrize("fast", PATHS)
def test_greedy_with_kv_cache_equals_full_recompute(engine, fast):
    e = path_engine(engine, fast)
    for conv in CONVS:
        # the reference feeds the whole sequence every step (no cache) and stops after a stop id or max_tokens
        reference = engine.greedy_reference(conv, GREEDY.max_tokens)
        [c] = e.generate([conv], GREEDY)
        assert c.ids == reference and c.completion_tokens == len(reference) > 0
        assert c.finish_reason == ("stop" if reference[-1] in engine.stop_ids else "length")
        assert c.prompt_tokens == len(engine.protocol.prompt(conv))


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


@pytest.mark.parametrize("fast", PATHS)
def test_stops_at_end_of_turn(engine, fast):
    eot = engine.protocol.end_of_turn_id
    words = engine.tokenizer.encode(" one two three")
    e = scripted(engine, [*words, eot], after=words[0], fast=fast)  # after the end of turn it would go on talking
    for params in (SamplingParams(max_tokens=50, temperature=0), SamplingParams(max_tokens=50, temperature=1.3, seed=1)):
        [c] = e.generate([CONVS[0]], params)
        assert (c.finish_reason, c.ids, c.text) == ("stop", [*words, eot], " one two three")
        assert c.completion_tokens == len(words) + 1  # the scripted words, then the end-of-turn token
    deltas = list(e.stream(CONVS[0], SamplingParams(max_tokens=50)))
    assert "".join(deltas) == " one two three" and len(deltas) == len(words)
    last = e.last_completion
    assert (last.finish_reason, last.completion_tokens) == ("stop", len(words) + 1)


@pytest.mark.parametrize("fast", PATHS)
def test_end_of_turn_on_the_last_allowed_token_is_a_stop(engine, fast):
    eot = engine.protocol.end_of_turn_id
    words = engine.tokenizer.encode(" a b")
    e = scripted(engine, [*words, eot], after=words[0], fast=fast)
    [at, short] = e.generate([CONVS[0], CONVS[2]], [SamplingParams(max_tokens=len(words) + 1, temperature=0),
                                                     SamplingParams(max_tokens=len(words), temperature=0)])
    assert (at.finish_reason, at.ids, at.text) == ("stop", [*words, eot], " a b")
    assert (short.finish_reason, short.ids, short.text) == ("length", words, " a b")


@pytest.mark.parametrize("fast", PATHS)
def test_length_limit_when_the_model_never_stops(engine, fast):
    word = engine.tokenizer.encode(" la")[0]
    e = scripted(engine, [], after=word, fast=fast)
    [c] = e.generate([CONVS[0]], SamplingParams(max_tokens=7, temperature=0.7, seed=3))
    assert (c.finish_reason, c.completion_tokens, c.ids, c.text) == ("length", 7, [word] * 7, " la" * 7)
    deltas = list(e.stream(CONVS[1], SamplingParams(max_tokens=5)))
    assert deltas == [" la"] * 5 and e.last_completion.finish_reason == "length"


def first_prefix_containing(tokenizer, ids, needle) -> int:
    """How many tokens it takes for the decoded text to contain `needle` (counted on decoded prefixes)."""
    return next(k for k in range(1, len(ids) + 1) if needle in tokenizer.decode(ids[:k]))


@pytest.mark.parametrize("fast", PATHS)
def test_stop_string_cuts_the_reply_and_is_never_streamed(engine, fast):
    tok, eot = engine.tokenizer, engine.protocol.end_of_turn_id
    text = "Sure. The answer is 4.\nUser: and more"
    ids = tok.encode(text)
    assert len(tok.encode("\nUser:")) > 1  # the stop string spans several tokens: text must be held back
    e = scripted(engine, ids, after=eot, fast=fast)
    params = SamplingParams(max_tokens=100, temperature=0, stop=["\nUser:", "never"])
    [c] = e.generate([CONVS[0]], params)
    k = first_prefix_containing(tok, ids, "\nUser:")  # the token that completes the stop string ends the row
    assert (c.finish_reason, c.text, c.ids, c.completion_tokens) == ("stop", "Sure. The answer is 4.", ids[:k], k)
    deltas = list(e.stream(CONVS[0], params))
    assert "".join(deltas) == c.text and len(deltas) > 1 and not any("\n" in d or "User" in d for d in deltas)
    assert e.last_completion.completion_tokens == k
    # a stop string whose start appears but which never completes: the held-back text is released in the end
    near = SamplingParams(max_tokens=100, temperature=0, stop=["\nUser: X"])
    [whole] = e.generate([CONVS[0]], near)
    assert (whole.finish_reason, whole.text, whole.ids) == ("stop", text, [*ids, eot])
    assert "".join(e.stream(CONVS[0], near)) == text


@pytest.mark.parametrize("fast", PATHS)
def test_batch_rows_stop_independently(engine, fast):
    tok, eot = engine.tokenizer, engine.protocol.end_of_turn_id
    convs = [*CONVS, Conversation.of("Count to four.")]
    replies = {"Hello there": " x", "Explain a dict": " one two three four five six seven",
               "ünïcödé": "A dict maps keys.\nUser: more", "Count to four": " 1 2 3 4"}
    script = {k: tok.encode(v) + [eot] for k, v in replies.items()}
    e = scripted(engine, by_prompt(tok, script), fast=fast)
    params = [SamplingParams(max_tokens=5, temperature=0), SamplingParams(max_tokens=3, temperature=0.8, seed=2),
              SamplingParams(max_tokens=40, temperature=0, stop=["\nUser:"]), SamplingParams(max_tokens=40, temperature=0)]
    out = e.generate(convs, params)
    k = first_prefix_containing(tok, script["ünïcödé"], "\nUser:")
    assert [c.finish_reason for c in out] == ["stop", "length", "stop", "stop"]
    assert [c.text for c in out] == [" x", tok.decode(script["Explain a dict"][:3]), "A dict maps keys.", " 1 2 3 4"]
    assert [c.ids for c in out] == [script["Hello there"], script["Explain a dict"][:3], script["ünïcödé"][:k],
                                    script["Count to four"]]
    assert [c.completion_tokens for c in out] == [2, 3, k, len(tok.encode(" 1 2 3 4")) + 1]
    # the random model, free running: each row of the batch is what greedy decoding of that row alone gives
    limits = (3, 9, 5)
    free = path_engine(engine, fast).generate(CONVS, [SamplingParams(max_tokens=n, temperature=0) for n in limits])
    reference = [engine.greedy_reference(c, n) for c, n in zip(CONVS, limits, strict=True)]
    assert [c.ids for c in free] == reference
    assert [c.completion_tokens for c in free] == [len(r) for r in reference]


@pytest.mark.parametrize("fast", PATHS)
def test_rows_that_join_a_running_batch_stop_on_their_own_script(engine, fast):
    tok, eot = engine.tokenizer, engine.protocol.end_of_turn_id
    convs = [*CONVS, Conversation.of("Count to four.")]
    replies = {"Hello there": " one two three four five six", "Explain a dict": " x",
               "ünïcödé": "A dict maps keys.\nUser: more", "Count to four": " 1 2 3 4"}
    script = {k: tok.encode(v) + [eot] for k, v in replies.items()}
    e = scripted(engine, by_prompt(tok, script), fast=fast)
    deltas = {i: [] for i in range(4)}
    requests = [e.request(c, p, on_delta=deltas[i].append) for i, (c, p) in enumerate(zip(convs, [
        SamplingParams(max_tokens=40, temperature=0), SamplingParams(max_tokens=40, temperature=0),
        SamplingParams(max_tokens=40, temperature=0.5, seed=1, stop=["\nUser:"]), SamplingParams(max_tokens=3)],
        strict=True))]
    batch = e.batch()
    batch.add(requests[:1])
    batch.step()
    batch.step()  # the first row has two tokens when the others join
    assert batch.can_join
    batch.add(requests[1:])
    while batch.rows:
        batch.step()
    k = first_prefix_containing(tok, script["ünïcödé"], "\nUser:")
    out = [r.completion for r in requests]
    assert [c.finish_reason for c in out] == ["stop", "stop", "stop", "length"]
    assert [c.ids for c in out] == [script["Hello there"], script["Explain a dict"], script["ünïcödé"][:k],
                                    script["Count to four"][:3]]
    assert [c.text for c in out] == [" one two three four five six", " x", "A dict maps keys.", tok.decode(script["Count to four"][:3])]
    assert ["".join(d) for d in deltas.values()] == [c.text for c in out]
    assert [c.completion_tokens for c in out] == [len(script["Hello there"]), 2, k, 3]


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


@pytest.mark.parametrize("fast", PATHS)
def test_engine_stream_of_multibyte_text(engine, fast):
    text = "日本語 🙂 ünïcödé"
    ids = engine.tokenizer.encode(text)
    assert any(not _complete_utf8(engine.tokenizer.token_bytes(i)) for i in ids)  # some token holds part of a character
    e = scripted(engine, ids, after=engine.protocol.end_of_turn_id, fast=fast)
    deltas = list(e.stream(CONVS[0], SamplingParams(max_tokens=100)))
    assert "".join(deltas) == text and len(deltas) > 3 and not any("\ufffd" in d for d in deltas)
    last = e.last_completion
    assert (last.finish_reason, last.completion_tokens) == ("stop", len(ids) + 1)


def _complete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


_TOKENIZERS = {}


def _tokenizer(path):
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(str(path))
    return _TOKENIZERS[path]
