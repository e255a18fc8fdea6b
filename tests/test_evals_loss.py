"""The held-out loss (computed by the training code: examples, packing, SupervisedLoss) equals the plain definition:
each conversation alone through the model, cross-entropy of every token its render mask supervises, summed over the
set and divided by their count."""

from __future__ import annotations

import math

import pytest
import torch

from chatloom.conversation import Conversation


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from chatloom.evals.generate import load_engine
    from chatloom.train import make_model_dir

    return load_engine(make_model_dir(tmp_path_factory.mktemp("loss") / "m", protocol="chatml", config="tiny", seed=3))


def plain_loss(model, protocol, convs) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for r in protocol.render_batch(convs):
            ids = torch.tensor([r.ids])
            logits = model(input_ids=ids).logits[0].float()
            for t in range(len(r.ids) - 1):
                if r.mask[t + 1]:
                    total += torch.nn.functional.cross_entropy(logits[t], ids[0, t + 1]).item()
                    count += 1
    return total / count, count


def test_loss_equals_the_plain_definition(engine):
    from chatloom.evals.loss import supervised_loss

    convs = [Conversation.of("What is 2+2?", "2+2 = 4"),
             Conversation.of("hi", "Hello! I'm Loom.", "And 3*3?", "3*3 = 9", system="Be brief."),
             Conversation.of("Spell 'moon' backwards.", "'moon' backwards is 'noom'. \u6f22\u5b57 \U0001f600")]
    want, count = plain_loss(engine.model, engine.protocol, convs)
    for batch_size in (1, 2, 16):
        got = supervised_loss(engine.model, engine.protocol, convs, batch_size=batch_size)
        assert got["tokens"] == count and got["skipped"] == 0
        assert got["loss"] == pytest.approx(want, abs=1e-4) and got["ppl"] == pytest.approx(math.exp(want), rel=1e-3)


def test_conversation_cut_to_nothing_is_counted_not_averaged(engine):
    """Truncation never keeps an answer without its end-of-turn token: a reply past `max_len` is dropped whole and the
    conversation is reported as skipped (no NaN, no silent zero)."""
    from chatloom.evals.loss import supervised_loss

    short = Conversation.of("hi", "hello")
    long = Conversation.of("x " * 40, "y " * 40)
    got = supervised_loss(engine.model, engine.protocol, [short, long], max_len=30)
    want, count = plain_loss(engine.model, engine.protocol, [short])
    assert got["skipped"] == 1 and got["tokens"] == count and got["loss"] == pytest.approx(want, abs=1e-4)
