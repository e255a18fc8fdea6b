"""`--quantize int8` through the lean Llama decoder (`chatloom serve --quantize int8`, `Engine.from_pretrained(...,
quantize="int8")`): the fused matrices and the output head become per-channel int8, the decoder stays the lean one, and
greedy decoding stays close to fp32's (on a tiny random model, where near-ties flip easily: most positions agree).
Models the lean decoder does not support keep the transformers-forward int8 path."""

from __future__ import annotations

import pytest
import torch

from chatloom.conversation import Conversation
from chatloom.engine import Engine, SamplingParams

from .test_engine import one_torch_thread, tiny_model_dir  # noqa: F401 (fixtures)

CONVS = [Conversation.of("Hello there, how are you?"), Conversation.of("Tell me about lists."),
         Conversation.of("Hi", "Hello! How can I help?", "Explain a dict in one line.", system="You are terse.")]
GREEDY = SamplingParams(max_tokens=16, temperature=0)


def test_int8_goes_through_the_lean_decoder_and_stays_close_to_fp32(tiny_model_dir):  # noqa: F811
    fp32 = Engine.from_pretrained(tiny_model_dir)
    int8 = Engine.from_pretrained(tiny_model_dir, quantize="int8")
    assert int8.decoder is not None and int8.decoder.int8 and not fp32.decoder.int8
    qkv = int8.decoder.layers[0]["qkv"]
    assert qkv.weight().dtype == torch.qint8 and qkv.weight().qscheme() == torch.per_channel_affine
    b = [int8.generate([c], GREEDY)[0].ids for c in CONVS]
    a = [fp32.generate([c], GREEDY)[0].ids for c in CONVS]
    first = [x[0] == y[0] for x, y in zip(a, b, strict=True)]
    same = sum(u == v for x, y in zip(a, b, strict=True) for u, v in zip(x, y, strict=False))
    assert all(first) and same >= 0.6 * sum(map(len, a)), (a, b)
    # its logits are fp32's up to quantization error
    ids = torch.tensor([fp32.protocol.prompt(CONVS[0])])
    cache32, cache8 = fp32.decoder.new_cache(1, ids.shape[1]), int8.decoder.new_cache(1, ids.shape[1])
    with torch.inference_mode():
        pos = torch.arange(ids.shape[1])[None]
        l32 = fp32.decoder.forward(ids, pos, cache32, 0, None, fp32.decoder.rope_tables(ids.shape[1]))
        l8 = int8.decoder.forward(ids, pos, cache8, 0, None, int8.decoder.rope_tables(ids.shape[1]))
    assert torch.nn.functional.cosine_similarity(l32, l8).item() > 0.99


def test_int8_needs_a_float32_model_and_a_known_scheme(tiny_model_dir):  # noqa: F811
    engine = Engine.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="unknown quantization"):
        Engine(engine.model, engine.protocol, quantize="int4")
    with pytest.raises(ValueError, match="lean Llama decoder"):
        Engine(engine.model, engine.protocol, fast=False, quantize="int8")
    bf16 = Engine.from_pretrained(tiny_model_dir, dtype="bfloat16", quantize="int8")  # converted to fp32 for int8
    assert bf16.decoder.int8 and bf16.model.dtype == torch.float32
