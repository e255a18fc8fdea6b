"""Continuous batching, in the engine's `Batch` and in the server's `Scheduler`: rows that join a running batch (prefill,
then decode with the others) and rows that leave it give exactly the tokens they would alone (greedy, on both decoding
paths: the lean Llama decoder and the transformers forward), and a request that arrives mid-batch starts, and here
finishes, before the batch's first request is done. Ordering is forced with callbacks on the decoding thread, never
with sleeps."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import chatloom.engine as engine_module
from chatloom.conversation import Conversation
from chatloom.engine import Engine, SamplingParams
from chatloom.serve.scheduler import Job, Scheduler

from .test_engine import engine, one_torch_thread, tiny_model_dir  # noqa: F401 (fixtures)

CONVS = [Conversation.of("Hello there, how are you?"),
         Conversation.of("Hi", "Hello! How can I help?", "Explain a dict in one line.", system="You are terse."),
         Conversation.of("ünïcödé ☃ 日本語 🙂"),
         Conversation.of("A much longer question about sorting lists of tuples by their second item " * 3),
         Conversation.of("Short?")]


@pytest.fixture(scope="module", params=["lean", "transformers"])
def any_engine(request, engine):  # noqa: F811
    return engine if request.param == "lean" else Engine(engine.model, engine.protocol, fast=False)


def solo(eng: Engine, conv: Conversation, max_tokens: int) -> list[int]:
    return eng.generate([conv], SamplingParams(max_tokens=max_tokens, temperature=0))[0].ids


def run_schedule(eng: Engine, schedule: list[tuple[int, int, int]]):
    """Decode (join_step, conversation, max_tokens) rows, each joining the batch at its step; returns the requests and,
    per step, how many rows decoded together."""
    requests = [eng.request(CONVS[c], SamplingParams(max_tokens=n, temperature=0)) for _, c, n in schedule]
    batch, step, widths = eng.batch(), 0, []
    while step <= max(at for at, _, _ in schedule) or batch.rows:
        batch.add([r for (at, _, _), r in zip(schedule, requests, strict=True) if at == step])
        widths.append(len(batch.rows))
        if batch.rows:
            batch.step()
        step += 1
    return requests, widths


@pytest.mark.parametrize("trim", [64, 1])
def test_rows_joining_and_leaving_a_running_batch_decode_as_if_alone(any_engine, monkeypatch, trim):
    monkeypatch.setattr(engine_module, "TRIM_COLUMNS", trim)  # 1: drop freed cache columns at every chance
    # joins with a longer prompt than the running window (the batch is left-padded), a shorter one (the newcomer is),
    # two at once, and one after the batch shrank
    schedule = [(0, 0, 20), (3, 1, 12), (3, 2, 16), (6, 3, 6), (9, 4, 9), (15, 0, 4)]
    requests, widths = run_schedule(any_engine, schedule)
    assert [r.completion.ids for r in requests] == [solo(any_engine, CONVS[c], n) for _, c, n in schedule]
    assert all(r.error is None for r in requests) and max(widths) >= 4


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, len(CONVS) - 1), st.integers(1, 12)), min_size=1, max_size=5))
def test_any_join_schedule_equals_one_by_one_greedy(engine, schedule):  # noqa: F811
    requests, _ = run_schedule(engine, schedule)
    assert [r.completion.ids for r in requests] == [solo(engine, CONVS[c], n) for _, c, n in schedule]


def test_a_request_arriving_mid_batch_starts_and_finishes_before_the_batch_does(engine):  # noqa: F811
    endless = Engine(engine.model, engine.protocol)
    endless.stop_ids = set()  # the first request runs its full 40 tokens
    scheduler = Scheduler(endless, max_batch=4)
    log: list[tuple[str, str]] = []
    paused, resume, finished = threading.Event(), threading.Event(), threading.Event()

    def first_delta(text):
        log.append(("A", "token"))
        if len(log) == 3:  # the decoding thread waits here, mid-batch, until B is queued
            paused.set()
            resume.wait(60)

    def done(name):
        def on_finish(completion):
            log.append((name, "done"))
            if name == "A":
                finished.set()
        return on_finish

    a = endless.request(CONVS[0], SamplingParams(max_tokens=40, temperature=0), on_delta=first_delta, on_finish=done("A"))
    b = endless.request(CONVS[1], SamplingParams(max_tokens=5, temperature=0),
                        on_delta=lambda text: log.append(("B", "token")), on_finish=done("B"))
    scheduler.submit(Job([a]))
    assert paused.wait(60)
    scheduler.submit(Job([b]))
    resume.set()
    assert finished.wait(120)
    scheduler.stop()
    assert log.index(("B", "done")) < log.index(("A", "done"))  # B did not wait for A's batch to finish
    assert a.completion.completion_tokens == 40 and b.completion.completion_tokens == 5
    assert a.completion.ids == solo(endless, CONVS[0], 40) and b.completion.ids == solo(endless, CONVS[1], 5)
    assert (scheduler.batches, scheduler.joined, scheduler.largest_batch) == (1, 1, 2)


def test_scheduler_admits_first_come_first_served_within_max_batch(engine):  # noqa: F811
    endless = Engine(engine.model, engine.protocol)
    endless.stop_ids = set()
    scheduler = Scheduler(endless, max_batch=2)
    order, all_done = [], threading.Event()
    paused, resume = threading.Event(), threading.Event()

    def make(name, n, hold=False):
        def on_delta(text):
            if hold and not paused.is_set():
                paused.set()
                resume.wait(60)

        def on_finish(completion):
            order.append(name)
            if len(order) == 4:
                all_done.set()
        return endless.request(CONVS[0], SamplingParams(max_tokens=n, temperature=0), on_delta=on_delta,
                               on_finish=on_finish)

    scheduler.submit(Job([make("first", 6, hold=True)]))
    assert paused.wait(60)
    two_rows = Job([make("wide-0", 3), make("wide-1", 3)])  # needs 2 rows: waits until both are free
    scheduler.submit(two_rows)
    scheduler.submit(Job([make("later", 2)]))  # fits now, but must not overtake the wide job
    resume.set()
    assert all_done.wait(120)
    scheduler.stop()
    assert scheduler.largest_batch <= 2
    assert order.index("first") < order.index("wide-0") and order.index("wide-0") < order.index("later")


def test_a_job_wider_than_max_batch_runs_alone_instead_of_waiting_forever(engine):  # noqa: F811
    scheduler = Scheduler(engine, max_batch=1)
    done, finished = [], threading.Event()

    def on_finish(completion):
        done.append(completion)
        if len(done) == 3:
            finished.set()

    job = Job([engine.request(CONVS[0], SamplingParams(max_tokens=4, temperature=0), on_finish=on_finish)
               for _ in range(3)])  # n=3 on a server with --max-batch 1
    scheduler.submit(job)
    assert finished.wait(120)
    scheduler.stop()
    assert [c.ids for c in done] == [solo(engine, CONVS[0], 4)] * 3


def test_stopping_the_server_tells_every_decoding_and_waiting_request(engine):  # noqa: F811
    endless = Engine(engine.model, engine.protocol)
    endless.stop_ids = set()
    scheduler = Scheduler(endless, max_batch=1)
    paused, resume, errors = threading.Event(), threading.Event(), []

    def hold(text):
        if not paused.is_set():
            paused.set()
            resume.wait(60)

    running = endless.request(CONVS[0], SamplingParams(max_tokens=400, temperature=0), on_delta=hold,
                              on_error=errors.append)
    scheduler.submit(Job([running]))
    assert paused.wait(60)
    waiting = endless.request(CONVS[1], SamplingParams(max_tokens=4, temperature=0))
    waiting_job = Job([waiting], loop=_Recorder())
    scheduler.submit(waiting_job)
    stopper = threading.Thread(target=scheduler.stop)  # while the decoding thread is held mid-step
    stopper.start()
    assert scheduler.stopping.wait(60)
    resume.set()
    stopper.join(60)
    assert not scheduler.thread.is_alive()
    assert errors == ["RuntimeError: the server is shutting down"] and running.completion is None
    assert waiting_job.loop.events == [("error", 0, "the server is shutting down")] and waiting.completion is None


class _Recorder:
    """Stands in for a job's event loop: records what the decoding thread emits."""

    def __init__(self):
        self.events = []

    def call_soon_threadsafe(self, put, event):
        self.events.append(event)


@pytest.mark.parametrize("window", [8, 4096])
def test_sliding_window_model_rows_leave_and_decode_as_if_alone(engine, monkeypatch, window):  # noqa: F811
    """Gemma 3 interleaves sliding-window layers, whose cache counts the columns it has seen (a quickstart of Gemma 3
    270M crashed in its evaluation when finished rows freed leading columns: 'size of tensor a (43) must match ... (109)').
    A window the rows outgrow (8: those layers keep only their last columns, nothing can be trimmed) and one they never
    reach (4096: trimmed like any cache)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    monkeypatch.setattr(engine_module, "TRIM_COLUMNS", 1)
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(engine.protocol.tokenizer), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                              sliding_window=window, layer_types=["sliding_attention", "full_attention"],
                              max_position_embeddings=4096)
    gemma = Engine(Gemma3ForCausalLM(config).eval(), engine.protocol, fast=False)
    gemma.stop_ids = set()
    # one batch, as `generate` makes (a sliding-window cache takes no rows into a running batch): short rows leave while
    # long ones go on
    schedule = [(0, 0, 20), (0, 3, 4), (0, 1, 6), (0, 2, 14), (0, 4, 9)]
    requests, widths = run_schedule(gemma, schedule)
    assert all(r.error is None for r in requests), [r.error for r in requests]
    assert [r.completion.ids for r in requests] == [solo(gemma, CONVS[c], n) for _, c, n in schedule]
    assert max(widths) >= 3
