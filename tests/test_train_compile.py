"""`TrainConfig.compile` / `--compile` with per-document attention: the attention (whose bucket plan differs from batch
to batch) and the fused output head + loss (whose row count is the batch's supervised tokens) run eagerly inside the
compiled step, so batches of other lengths and packings do not recompile it each time, and the compiled step gives the
eager loss and gradients. (Traced, both recompiled the step for every batch until dynamo's limit: a SmolLM2 step took
4.3 s instead of 1.1 s.)"""

from __future__ import annotations

import torch
import torch._dynamo

from chatloom.train.attention import NAME, use_training_attention
from chatloom.train.loop import SupervisedLoss
from chatloom.train.models import build_model

from .test_train_attention import VOCAB, loss_and_grads, packed_batch

#: (documents per row, row length): other lengths, other packings, other supervised counts
BATCHES = [([[20, 30, 14]], 64), ([[50, 60], [10, 20, 30]], 128), ([[64], [30, 34]], 64), ([[5] * 30, [100, 90]], 192),
           ([[7, 9, 11], [40]], 64), ([[120, 8], [33, 33, 33]], 128)]


def test_a_compiled_step_gives_the_eager_loss_and_is_not_recompiled_per_batch():
    torch._dynamo.reset()
    model = build_model("tiny", VOCAB, seed=0)
    assert use_training_attention(model) and model.config._attn_implementation == NAME
    eager, compiled = SupervisedLoss(model), torch.compile(SupervisedLoss(model))
    with torch._dynamo.config.patch(recompile_limit=3, fail_on_recompile_limit_hit=True):
        for seed, (docs, length) in enumerate(BATCHES):
            batch = packed_batch(docs, length, seed)
            want_loss, want_grads = loss_and_grads(model, batch, module=eager)
            got_loss, got_grads = loss_and_grads(model, batch, module=compiled)
            torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_grads, want_grads, rtol=1e-4, atol=1e-6)
