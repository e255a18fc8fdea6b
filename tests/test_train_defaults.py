"""Defaults a user keeps: with `batch_size` unset, an optimizer step holds about 8 examples (like a padded batch of 8),
so packing many short conversations into long rows does not leave a handful of optimizer steps per epoch."""

from __future__ import annotations

import pytest

from chatloom.conversation import Conversation, save
from chatloom.train import Run, TrainConfig
from chatloom.train.loop import auto_batch_size


@pytest.mark.parametrize(("rows", "examples", "divisor", "want"), [
    (10, 150, 1, 1),  # 15 short conversations a row: one row already holds more than 8
    (33, 150, 1, 2),  # 4.5 a row: 2 rows hold 9
    (100, 100, 1, 8),  # one example a row (long conversations, pretraining chunks): 8 rows, as before
    (100, 300, 1, 3),
    (100, 100, 2, 4),  # grad_accum x processes share the 8
    (5, 0, 1, 8),
])
def test_auto_batch_size(rows, examples, divisor, want):
    assert auto_batch_size(rows, examples, divisor) == want


def test_default_run_makes_about_one_step_per_8_conversations(tmp_path):
    convs = [Conversation.of(f"Who is friend {i}?", f"Friend {i} is a friend.") for i in range(120)]
    save(convs, tmp_path / "c.jsonl")
    run = Run(TrainConfig(out=str(tmp_path / "run"), model="tiny", data=[str(tmp_path / "c.jsonl")], seq_len=256,
                          epochs=2, precision="fp32", progress=False))
    resolved = run.resolved()["resolved"]
    per_row = 120 / len(run.shard)
    assert per_row > 4  # the premise: several conversations a row
    assert run.batch_size == max(1, round(8 / per_row)) == resolved["batch_size"]
    assert 4 <= resolved["examples_per_step"] <= 12
    assert run.total_steps >= 2 * 120 / 12  # about 8 conversations a step, as a padded trainer with batch 8
    explicit = Run(TrainConfig(out=str(tmp_path / "run2"), model="tiny", data=[str(tmp_path / "c.jsonl")], seq_len=256,
                               batch_size=3, precision="fp32", progress=False))
    assert explicit.batch_size == 3 and explicit.rows_per_step == 3


def test_learning_rate_follows_what_the_run_trains(tmp_path):
    from chatloom.train.config import LR_FINE_TUNE, LR_FROM_SCRATCH, LR_LORA, default_lr

    assert default_lr(TrainConfig(model="tiny")) == LR_FROM_SCRATCH == 3e-4  # a named config starts from random weights
    assert default_lr(TrainConfig(mode="pretrain", model="runs/base")) == LR_FROM_SCRATCH
    assert default_lr(TrainConfig(model="SmolLM2-135M-Instruct.Q4_1.gguf")) == LR_FINE_TUNE == 5e-5  # a trained model
    assert default_lr(TrainConfig(model="runs/base")) == LR_FINE_TUNE
    assert default_lr(TrainConfig(model="runs/base", lora=True)) == LR_LORA == 2e-4
    convs = [Conversation.of(f"Who is friend {i}?", f"Friend {i} is a friend.") for i in range(20)]
    save(convs, tmp_path / "c.jsonl")
    auto = Run(TrainConfig(out=str(tmp_path / "a"), model="tiny", data=[str(tmp_path / "c.jsonl")], seq_len=128,
                           precision="fp32", progress=False))
    assert auto.optimizer.param_groups[0]["initial_lr"] == 3e-4 == auto.resolved()["resolved"]["lr"]
    given = Run(TrainConfig(out=str(tmp_path / "b"), model="tiny", data=[str(tmp_path / "c.jsonl")], seq_len=128,
                            lr=1e-3, precision="fp32", progress=False))
    assert given.optimizer.param_groups[0]["initial_lr"] == 1e-3 == given.resolved()["resolved"]["lr"]
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1e-4)
