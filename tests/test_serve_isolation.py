"""Isolation: one request can never fail another. In the engine, a row whose parameters, callbacks or prompt fail ends
alone while its batch-mates decode exactly as they would alone; a failed shared forward ends every row with the error
and leaves the engine usable. The sampler survives every parameter the edge accepts (tiny temperatures and penalties
included). Over HTTP (a live uvicorn on loopback), bad values are 400s naming the field, and a row that fails inside
the decoding thread answers its own client with a 500 (or an error event in its stream) while the request batched with
it completes."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chatloom.conversation import Conversation
from chatloom.engine import ContextWindowError, Engine, Request, SamplingParams, _Row
from chatloom.serve.app import create_app

from .fuzz_http import live
from .test_engine import engine, one_torch_thread, tiny_model_dir  # noqa: F401 (fixtures)

CONVS = [Conversation.of("Hello there, how are you?"),
         Conversation.of("Hi", "Hello! How can I help?", "Explain a dict in one line.", system="You are terse."),
         Conversation.of("Tell me about lists.")]
GREEDY = SamplingParams(max_tokens=12, temperature=0)


def solo(eng: Engine, conv: Conversation, params: SamplingParams = GREEDY) -> list[int]:
    return eng.generate([conv], params)[0].ids


def test_a_failing_row_ends_alone_and_its_batch_mates_decode_as_if_alone(engine):  # noqa: F811
    good = [engine.request(c, GREEDY) for c in CONVS]
    sampled = engine.request(CONVS[0], SamplingParams(max_tokens=12, temperature=0.8, seed=5))

    def boom(text):
        raise RuntimeError("the client's connection is gone")

    bad_callback = engine.request(CONVS[1], GREEDY, on_delta=boom)
    bad_seed = engine.request(CONVS[2], SamplingParams(max_tokens=12, temperature=0.8, seed=1))
    bad_seed.params.seed = 2**70  # what an unchecked edge let through: manual_seed raises
    bad_temperature = engine.request(CONVS[0], SamplingParams(max_tokens=12, temperature=0.8))
    bad_temperature.params.temperature = float("nan")  # sampling raises on NaN probabilities
    too_long = Request([5] * (engine.max_context + 1), GREEDY)  # a hand-made request past the context window
    outside_vocab = Request([10**7], GREEDY)  # its prefill fails (embedding lookup): only it may fail
    bad = [bad_callback, bad_seed, bad_temperature, too_long, outside_vocab]
    told = []
    for r in bad:
        r.on_error = told.append
    everyone = [good[0], bad_callback, good[1], bad_seed, sampled, bad_temperature, too_long, good[2], outside_vocab]
    for _ in engine.run(everyone):
        pass
    assert [r.completion.ids for r in good] == [solo(engine, c) for c in CONVS]
    assert sampled.completion.ids == solo(engine, CONVS[0], SamplingParams(max_tokens=12, temperature=0.8, seed=5))
    assert all(r.error is None for r in good + [sampled])
    assert all(r.error is not None and r.completion is None for r in bad) and len(told) == len(bad)
    assert isinstance(too_long.error, ContextWindowError) and "context window" in str(too_long.error)
    assert "connection is gone" in str(bad_callback.error) and isinstance(outside_vocab.error, IndexError)
    assert any(m.startswith("IndexError: ") for m in told)


def test_run_raises_a_row_error_nobody_handles_but_finishes_the_others_first(engine):  # noqa: F811
    ok = engine.request(CONVS[0], GREEDY)
    bad = engine.request(CONVS[1], SamplingParams(max_tokens=12, temperature=0.8))
    bad.params.temperature = float("nan")
    with pytest.raises(RuntimeError, match="probability"):
        for _ in engine.run([ok, bad]):
            pass
    assert ok.completion.ids == solo(engine, CONVS[0])


class BrokenLM(torch.nn.Module):
    """A real tiny LM whose forward raises once, at its `fail_at`-th call."""

    def __init__(self, inner, fail_at):
        super().__init__()
        self.inner, self.config, self.fail_at, self.calls = inner, inner.config, fail_at, 0

    @property
    def device(self):
        return self.inner.device

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kw):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost")
        return self.inner(**kw)


def test_a_failed_shared_forward_ends_every_row_and_the_engine_recovers(engine):  # noqa: F811
    broken = Engine(BrokenLM(engine.model, fail_at=4), engine.protocol)
    batch = broken.batch()
    requests = [broken.request(c, GREEDY) for c in CONVS]
    batch.add(requests)
    ended = []
    while batch.rows:
        ended += batch.step()
    assert sorted(map(id, ended)) == sorted(map(id, requests))
    assert all("device lost" in str(r.error) for r in requests)
    assert solo(broken, CONVS[0]) == solo(engine, CONVS[0])  # the next batch decodes normally


@settings(max_examples=200, deadline=None)
@given(temperature=st.one_of(st.just(0.0), st.sampled_from([5e-324, 1e-300, 1e-45, 1e-8, 2.0]), st.floats(0, 2)),
       top_p=st.one_of(st.sampled_from([5e-324, 1e-9, 1.0]), st.floats(0, 1, exclude_min=True)),
       top_k=st.integers(0, 100),
       penalty=st.one_of(st.sampled_from([5e-324, 1e-300, 1e-9, 10.0]), st.floats(0, 10, exclude_min=True)),
       scale=st.sampled_from([1.0, 1e3, 1e30, 3e38]), seed=st.integers(0, 2**63 - 1))
def test_the_sampler_survives_every_parameter_the_edge_accepts(engine, temperature, top_p, top_k, penalty,  # noqa: F811
                                                               scale, seed):
    params = SamplingParams(max_tokens=4, temperature=temperature, top_p=top_p, top_k=top_k,
                            repetition_penalty=penalty, seed=seed)
    row = _Row(Request([3, 5, 7], params), engine)
    logits = torch.randn(50, generator=torch.Generator().manual_seed(seed % 1000)).clamp(-1, 1) * scale  # finite
    logits[3] = scale  # a seen token with the largest logit, so the penalty matters
    token = row.sample(logits)
    assert 0 <= token < 50
    if 0 < temperature < 1e-40:  # practically zero: the best token after the penalty
        penalized, seen = logits.clone(), [3, 5, 7]  # float32, as the engine's logits
        penalized[seen] = torch.where(penalized[seen] > 0, penalized[seen] / penalty, penalized[seen] * penalty)
        assert penalized[token] == penalized.max()


# ------------------------------------------------------------------------------------------------------ over HTTP
class PoisonLM(torch.nn.Module):
    """A real tiny LM that answers NaN logits for rows whose input holds `marker` (sampling them fails inside the
    decoding thread), and that pauses before its `pause_at`-th forward until `resume` is set."""

    def __init__(self, inner, marker: int, pause_at: int):
        super().__init__()
        self.inner, self.config, self.marker, self.pause_at = inner, inner.config, marker, pause_at
        self.calls, self.paused, self.resume = 0, threading.Event(), threading.Event()

    @property
    def device(self):
        return self.inner.device

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, **kw):
        self.calls += 1
        if self.calls == self.pause_at:
            self.paused.set()
            assert self.resume.wait(60)
        out = self.inner(input_ids=input_ids, **kw)
        out.logits[(input_ids == self.marker).any(-1)] = float("nan")
        return out


def test_a_row_failing_in_the_decoder_answers_its_own_client_only(engine):  # noqa: F811
    marker = engine.tokenizer.encode("☃")[0]
    model = PoisonLM(engine.model, marker, pause_at=4)
    poisoned = Engine(model, engine.protocol)
    poisoned.stop_ids = set()  # the healthy request runs its full length
    app = create_app(poisoned, model_name="poison")
    healthy = {"messages": [{"role": "user", "content": "Tell me about lists."}], "max_tokens": 30, "temperature": 0}
    poison = {"messages": [{"role": "user", "content": "☃ snow"}], "max_tokens": 30, "temperature": 1.0}
    out = {}
    with live(app) as url:
        def post(name, body):
            out[name] = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)

        def stream(name, body):
            with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
                out[name] = (r.status_code, [line for line in r.iter_lines() if line.startswith("data: ")])

        threads = [threading.Thread(target=stream, args=("healthy", healthy))]
        threads[0].start()
        assert model.paused.wait(60)  # the healthy request is mid-batch, its decoding thread held
        threads += [threading.Thread(target=post, args=("poison", poison)),
                    threading.Thread(target=stream, args=("poison_stream", poison))]
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 60
        while app.state.scheduler.waiting < 2:  # both poisoned requests queued: they join the running batch
            assert time.monotonic() < deadline
            time.sleep(0.01)
        model.resume.set()
        for t in threads:
            t.join(120)
        health = httpx.get(url + "/health").json()
    status, events = out["healthy"]
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                   for e in events if e != "data: [DONE]" and json.loads(e[6:]).get("choices"))
    assert status == 200 and events[-1] == "data: [DONE]" and "error" not in "".join(events)
    assert text == poisoned.generate([Conversation.from_dict({"messages": healthy["messages"]})], SamplingParams(max_tokens=30, temperature=0))[0].text
    r = out["poison"]
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "probability" in r.json()["error"]["message"]
    status, events = out["poison_stream"]
    assert status == 200 and json.loads(events[-1][6:])["error"]["type"] == "server_error"
    assert health["joined"] == 2 and health["failed"] == 2 and health["batches"] == 1


@pytest.fixture(scope="module")
def server(engine):  # noqa: F811
    with live(create_app(engine, model_name="tiny")) as url:
        yield url


@pytest.mark.parametrize("field,value", [("seed", 2**63), ("seed", 2**70), ("seed", -1), ("temperature", 2.5),
                                         ("top_p", 0), ("top_k", -1), ("repetition_penalty", 0), ("n", 9),
                                         ("stop", ["x" * 1001]), ("max_tokens", 0)])
def test_out_of_range_fields_are_400s_naming_the_field(server, field, value):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert field in (r.json()["error"]["param"] or "") + r.json()["error"]["message"]


@pytest.mark.parametrize("raw", [b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                                 b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}',
                                 b'{"messages": [{"role": "user", "content": "\\ud800"}]}'])
def test_non_finite_numbers_and_unpaired_surrogates_are_400s(server, raw):
    r = httpx.post(server + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text


def test_the_largest_seed_is_accepted_and_choice_seeds_wrap(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "seed": 2**63 - 1, "n": 2}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
