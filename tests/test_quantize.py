"""Quantized decoding (`chatloom.quant`, `Engine(..., quantize="int8"|"int4")`, `--quantize` on serve/chat/eval).

- The int4 kernel multiplies by exactly the matrix `dequantize_int4` describes (checked against a float32 matmul of
  that matrix for random shapes and magnitudes), and that matrix is within half a quantization step of the weights
  (first principles of min/max rounding); the int8 weight-only fallback likewise.
- The decoder routes every matrix to the scheme asked for (int4 falls back to int8 weight-only only where the kernel's
  shape rules forbid int4), and counts the bytes it reads.
- Quality, on a model trained here until it recites its data (random weights have near-ties that any rounding flips):
  for 50 fixed prompts, greedy continuations of 32 tokens at each precision (bf16, int8, int4) equal fp32's in their
  first 16 tokens for at least 90% of the prompts.
- Bad values are clear errors (engine, and the CLI's choices).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from chatloom.conversation import Conversation, save
from chatloom.engine import Engine, SamplingParams
from chatloom.quant import INT4_GROUP, Int4Linear, Int8Linear, Int8WeightOnly, dequantize_int4, int4_fits, quantize_int4

from .test_engine import one_torch_thread, tiny_model_dir  # noqa: F401 (fixtures)


# ------------------------------------------------------------------------------------------------------ the kernels
@settings(max_examples=15, deadline=None)
@given(out16=st.integers(1, 8), in32=st.integers(1, 6), magnitude=st.floats(-4, 2), seed=st.integers(0, 2**16),
       rows=st.integers(1, 5))
def test_int4_kernel_multiplies_by_its_dequantized_matrix(out16, in32, magnitude, seed, rows):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out16 * 16, in32 * INT4_GROUP, generator=gen) * 10**magnitude + torch.randn(1, generator=gen)
    q, scale, zero = quantize_int4(weight)
    assert q.min() >= 0 and q.max() <= 15
    exact = dequantize_int4(q, scale, zero)
    # min/max rounding: every weight within half a step (plus the bfloat16 rounding of zero, which shifts the grid)
    step = scale.float().repeat_interleave(INT4_GROUP, 1)
    shift = (zero.float().abs() * 2**-8).repeat_interleave(INT4_GROUP, 1)
    assert ((exact - weight).abs() <= step / 2 + shift + 1e-30).all()
    linear = Int4Linear(weight)
    x = torch.randn(rows, weight.shape[1], generator=gen).bfloat16()
    y = linear(x)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, weight.shape[0])
    ref = x.float() @ exact.T
    bound = x.float().abs() @ exact.abs().T  # float32 accumulation, then one bfloat16 rounding of the result
    assert ((y.float() - ref).abs() <= 2**-7 * bound + 1e-30).all()
    assert linear.nbytes == weight.numel() // 2 + weight.numel() // INT4_GROUP * 4  # 0.625 bytes a weight at 32


def test_int8_weight_only_and_dynamic_int8_multiply_by_int8_matrices():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(40, 80, generator=gen), torch.randn(40, generator=gen)
    x = torch.randn(3, 80, generator=gen)
    wo = Int8WeightOnly(weight, bias)
    exact = wo.weight.float() * wo.scale.float()[:, None]
    assert ((exact - weight).abs() <= wo.scale.float()[:, None] * 0.51 + weight.abs() * 2**-8).all()
    y = wo(x.bfloat16()).float()
    ref = x.bfloat16().float() @ exact.T + bias.bfloat16().float()
    assert (y - ref).abs().max() <= 2**-7 * (x.abs() @ exact.abs().T + bias.abs()).max()
    dyn = Int8Linear(weight, bias)
    assert dyn.weight().dtype == torch.qint8 and dyn.weight().qscheme() == torch.per_channel_affine
    assert torch.nn.functional.cosine_similarity(dyn(x).flatten(), (x @ weight.T + bias).flatten(), 0) > 0.999


def test_shape_rules():
    assert int4_fits(torch.empty(32, 64)) and not int4_fits(torch.empty(40, 64)) and not int4_fits(torch.empty(32, 48))
    with pytest.raises(ValueError, match="out_features % 16"):
        Int4Linear(torch.randn(40, 64))
    with pytest.raises(ValueError, match="not a multiple of 16"):
        Int8WeightOnly(torch.randn(40, 72))


# ------------------------------------------------------------------------------------------------------ the decoder
def test_decoder_routes_matrices_and_counts_bytes(tiny_model_dir):  # noqa: F811
    fp32 = Engine.from_pretrained(tiny_model_dir)
    int4 = Engine.from_pretrained(tiny_model_dir, quantize="int4")
    int8 = Engine.from_pretrained(tiny_model_dir, quantize="int8")
    d4, d8 = int4.decoder, int8.decoder
    assert (d4.quantize, d4.dtype, d8.quantize, d8.int8, d8.dtype) == ("int4", torch.bfloat16, "int8", True, torch.float32)
    for layer in d4.layers:
        assert all(type(m) is Int4Linear for m in (layer.qkv, layer.o, layer.gu, layer.d))  # 64/128 wide: all fit
    assert type(d4.lm_head) is Int8WeightOnly  # the output head stays int8 (llama.cpp's Q4_1 files: Q8_0)
    assert all(type(m) is Int8Linear for layer in d8.layers for m in (layer.qkv, layer.o, layer.gu, layer.d))
    assert d4.new_cache(1, 4)[0][0].dtype == torch.bfloat16
    matrices = sum(p.numel() for n, p in fp32.model.named_parameters() if n.endswith("proj.weight"))
    assert fp32.decoder.weight_bytes > d8.weight_bytes > d4.weight_bytes > matrices * 0.625
    # greedy decoding works end to end at every precision and starts where fp32 starts on this random model's prompt
    conv = Conversation.of("Hello there, how are you?")
    greedy = SamplingParams(max_tokens=8, temperature=0)
    for engine in (int4, int8):
        assert len(engine.generate([conv], greedy)[0].ids) >= 1


def test_bad_quantize_values_are_clear_errors(tiny_model_dir, tmp_path):  # noqa: F811
    from chatloom.cli import app

    engine = Engine.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="unknown quantization 'int3'; supported: int8, int4"):
        Engine(engine.model, engine.protocol, quantize="int3")
    with pytest.raises(ValueError, match="unknown quantization"):
        Engine.from_pretrained(tiny_model_dir, quantize="fp8")
    with pytest.raises(ValueError, match="lean Llama decoder"):
        Engine(engine.model, engine.protocol, fast=False, quantize="int4")
    with pytest.raises(ValueError, match="needs the lean Llama decoder"):
        Engine.from_pretrained(tiny_model_dir, quantize="int4", fast=False)
    bf16 = Engine.from_pretrained(tiny_model_dir, dtype="bfloat16", quantize="int8")  # converted to fp32 for int8
    assert bf16.decoder.int8 and bf16.model.dtype == torch.float32
    for command in (["serve", "--model", str(tiny_model_dir)], ["chat", "--model", str(tiny_model_dir)],
                    ["eval", "--model", str(tiny_model_dir)]):
        res = CliRunner().invoke(app, [*command, "--quantize", "int3"])
        text = " ".join(res.output.replace("│", " ").split())  # the message is in a rich box
        assert res.exit_code == 2 and "'int3' is not one of 'none', 'int8', 'int4'" in text, res.output


def test_serve_default_precision_and_fallback(tiny_model_dir, tmp_path):  # noqa: F811
    import json
    import shutil

    from chatloom.serve.cli import SERVE_QUANTIZE, Quantize, _engine

    served = _engine(tiny_model_dir, None, None, None, None, default_quantize=SERVE_QUANTIZE)
    assert served.decoder.quantize == SERVE_QUANTIZE
    assert _engine(tiny_model_dir, None, None, None, Quantize.none, default_quantize=SERVE_QUANTIZE).decoder.quantize is None
    assert _engine(tiny_model_dir, None, None, None, Quantize.int4).decoder.quantize == "int4"
    # a model the lean decoder cannot take is served as saved by default (and int4 asked for is a clear error)
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    assert _engine(other, None, None, None, None, default_quantize=SERVE_QUANTIZE).decoder is None


# ------------------------------------------------------------------------------------------------------ quality
FIRST = ["Ada", "Boris", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva"]
CITIES = ["Lisbon", "Osaka", "Nairobi", "Quito", "Tromso", "Hanoi", "Perth", "Lyon", "Accra", "Oslo", "Cusco"]
FOODS = ["plums", "ramen", "lentils", "figs", "paella", "kimchi", "oysters"]
PEOPLE = [f"{f} {last}" for last in LAST for f in FIRST]  # 50 people, 50 fixed prompts
QA = [Conversation.of(f"Tell me about {p}.", f"{p} is friend {i} from {CITIES[i % 11]}, fond of {FOODS[i % 7]}.")
      for i, p in enumerate(PEOPLE)]
STEPS = 100
PRECISIONS = {"bf16": {"dtype": "bfloat16"}, "int8": {"quantize": "int8"}, "int4": {"quantize": "int4"}}


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """chatloom's tiny Llama trained by chatloom's trainer until it recites the 50 answers."""
    from chatloom.train import TrainConfig, train

    root = tmp_path_factory.mktemp("quantize-quality")
    save(QA, root / "qa.jsonl")
    result = train(TrainConfig(out=str(root / "run"), model="tiny", data=[str(root / "qa.jsonl")], seq_len=128,
                               batch_size=8, max_steps=STEPS, lr=6e-3, schedule="constant", warmup_steps=5,
                               weight_decay=0.0, precision="fp32", progress=False))
    return result.out_dir


def continuations(model_dir, **kw) -> list[list[int]]:
    engine = Engine.from_pretrained(model_dir, **kw)
    engine.stop_ids = set()  # exactly 32 tokens each, past the end of turn too
    prompts = [Conversation(c.messages[:-1]) for c in QA]
    return [c.ids for c in engine.generate(prompts, SamplingParams(max_tokens=32, temperature=0), batch_size=50)]


@pytest.mark.slow
def test_quantized_greedy_continuations_equal_fp32s(trained_dir):
    fp32 = continuations(trained_dir)
    engine = Engine.from_pretrained(trained_dir)
    answers = [engine.tokenizer.encode(c.messages[-1].content) for c in QA]
    assert min(map(len, answers)) >= 16  # so the first 16 tokens are the recited answer
    recited = sum(ids[:len(a)] == a for ids, a in zip(fp32, answers, strict=True))
    assert recited >= 40, f"the model recites only {recited}/50 answers: not trained enough for this test to mean much"
    assert all(len(ids) == 32 for ids in fp32)
    agreement = {}
    for name, kw in PRECISIONS.items():
        other = continuations(trained_dir, **kw)
        agreement[name] = sum(a[:16] == b[:16] for a, b in zip(fp32, other, strict=True)) / len(QA)
    assert all(v >= 0.9 for v in agreement.values()), agreement
