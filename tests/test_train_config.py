"""TrainConfig refuses every bad field at construction, naming the field and what it allows; fp16 trains with a scaler."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from chatloom.conversation import Conversation, save
from chatloom.train import Run, TrainConfig
from chatloom.train import config as config_module

#: for every field: bad values and a fragment the error must contain (the allowed values or the expected type)
BAD = {
    "out": [("", "non-empty string"), (3, "non-empty string")],
    "mode": [("finetune", "sft, pretrain")],
    "model": [("", "non-empty string"), (None, "non-empty string")],
    "tokenizer": [("", "tokenizer"), (5, "tokenizer")],
    "protocol": [("chatm", "gpt4o"), ("", "non-empty")],
    "data": [("a.jsonl", "list of files"), ([1], "list of file paths")],
    "val": [("v.jsonl", "list of files")],
    "text": [("t.txt", "list of files"), ({"a": 1}, "list of file paths")],
    "max_steps": [(-1, ">= 0"), (1.5, "integer")],
    "max_seconds": [(-1.0, ">= 0"), (math.inf, "finite"), ("10", "finite number")],
    "epochs": [(0, "> 0"), (-2.0, "> 0"), (math.nan, "finite")],
    "seq_len": [(1, ">= 2"), (0, ">= 2"), ("1024", "integer")],
    "batch_size": [(-1, ">= 0"), (True, "integer")],
    "grad_accum": [(0, ">= 1")],
    "lr": [(-1e-4, ">= 0"), (math.inf, "finite"), ("fast", "finite number")],
    "min_lr_ratio": [(-0.1, ">= 0"), (1.5, "<= 1")],
    "schedule": [("cosin", "cosine, linear, constant"), ("", "cosine, linear, constant")],
    "warmup_steps": [(-2, ">= -1")],
    "weight_decay": [(-0.01, ">= 0")],
    "beta1": [(1.0, "< 1"), (-0.5, ">= 0")],
    "beta2": [(1.2, "< 1")],
    "max_grad_norm": [(-1.0, ">= 0")],
    "neftune_alpha": [(-1.0, ">= 0"), (float("nan"), "finite")],
    "precision": [("fp8", "auto, bf16, fp16, fp32"), ("float32", "auto, bf16, fp16, fp32")],
    "seed": [(-1, "0 .. 4294967295"), (2**32, "0 .. 4294967295")],
    "eval_every": [(-5, ">= 0")],
    "save_every": [(-1, ">= 0")],
    "keep_checkpoints": [(-1, ">= 0")],
    "resume": [("yes", "true or false"), (1, "true or false")],
    "lora": [("no", "true or false")],
    "lora_r": [(0, ">= 1")],
    "lora_alpha": [(0, ">= 1")],
    "gradient_checkpointing": [(None, "true or false")],
    "compile": [(0, "true or false")],
    "fsdp": [("true", "true or false")],
    "device": [("tpu", "auto, cpu, cuda, cuda:N"), ("gpu0", "auto, cpu, cuda"), (0, "auto, cpu, cuda")],
    "progress": [("off", "true or false")],
    "train_reasoning": [("no", "true or false"), (0, "true or false"), (None, "true or false")],
    "freeze_embeddings": [("yes", "true or false"), (1, "true or false")],
    "on_error": [("ignore", "fail, skip")],
    "interrupt_after": [(-1, ">= 0")],
}


def test_every_field_has_bad_values_listed():
    assert set(BAD) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(("name", "value", "says"), [(n, v, s) for n, cases in BAD.items() for v, s in cases])
def test_bad_field_raises_naming_field_and_allowed_values(name, value, says):
    with pytest.raises(ValueError) as e:
        TrainConfig(**{name: value})
    assert str(e.value).startswith(f"{name}:") and says in str(e.value), str(e.value)


def test_defaults_and_edge_values_are_accepted():
    TrainConfig()
    cfg = TrainConfig(out=Path("runs/x"), data=(Path("a.jsonl"),), lr=1, epochs=0.5, min_lr_ratio=0, beta1=0,
                      warmup_steps=-1, seed=2**32 - 1, keep_checkpoints=0, max_grad_norm=0, device="cpu",
                      precision="fp32", schedule="linear", mode="pretrain", on_error="skip")
    assert cfg.out == "runs/x" and cfg.data == ["a.jsonl"] and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    for protocol in ("gpt4o", "chatml", "llama3", "hf"):
        TrainConfig(protocol=protocol)


def test_yaml_reads_exponent_numbers_and_names_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 3e-4\nschedule: linear\n")  # YAML 1.1: "3e-4" (no dot) is a string
    assert TrainConfig.from_yaml(good).lr == pytest.approx(3e-4)
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: cosin\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: schedule: 'cosin' is not one of cosine, linear, constant"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="lr: expected a finite number"):
        TrainConfig.from_yaml(good, lr="quick")


def test_fp16_on_a_cpu_without_float16_says_use_bf16(monkeypatch):
    monkeypatch.setattr(config_module, "cpu_fp16_supported", lambda: False)
    with pytest.raises(ValueError, match=r"precision: fp16 is for CUDA GPUs.*use bf16"):
        TrainConfig(precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="fp16 with --fsdp"):
        TrainConfig(precision="fp16", fsdp=True)


@pytest.mark.allow_skip("a GPU machine has CUDA: the message is for machines without it")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_refused():
    with pytest.raises(ValueError, match="device: 'cuda' but CUDA is not available"):
        TrainConfig(device="cuda")


def test_cli_prints_the_config_error(tmp_path):
    from typer.testing import CliRunner

    from chatloom.train.cli import app

    result = CliRunner().invoke(app, ["sft", "--data", "x.jsonl", "--precision", "fp8", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "precision: 'fp8' is not one of auto, bf16, fp16, fp32" in result.output


# ------------------------------------------------------------------------------------------------ fp16 + loss scaling
def needs_fp16(test):
    """fp16 runs here on a CPU whose oneDNN has float16 (this project's machines do); others lack the hardware."""
    return pytest.mark.allow_skip("CPU without float16")(pytest.mark.skipif(
        not config_module.cpu_fp16_supported(), reason="fp16 on CPU needs oneDNN float16 support")(test))


@pytest.fixture(scope="module")
def convs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "c.jsonl"
    save([Conversation.of(f"Question {i}?", f"Answer number {i} is {i * 7}.") for i in range(12)], path)
    return path


def run(convs_file, out, precision):
    return Run(TrainConfig(out=str(out), model="tiny", data=[str(convs_file)], seq_len=64, batch_size=4, max_steps=3,
                           lr=1e-3, warmup_steps=0, precision=precision, device="cpu", progress=False))


@needs_fp16
def test_fp16_trains_with_a_scaler_close_to_fp32(convs_file, tmp_path):
    fp16, fp32 = run(convs_file, tmp_path / "a", "fp16"), run(convs_file, tmp_path / "b", "fp32")
    assert isinstance(fp16.scaler, torch.amp.GradScaler) and fp32.scaler is None
    a, b = fp16.fit(), fp32.fit()
    assert a.final["fp16_overflow_steps"] == 0
    assert a.final["train_loss"] == pytest.approx(b.final["train_loss"], rel=2e-2)


@needs_fp16
def test_fp16_overflow_skips_the_step_and_lowers_the_scale(convs_file, tmp_path):
    r = run(convs_file, tmp_path / "c", "fp16")
    r.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # scaled gradients overflow float16
    before = [p.detach().clone() for p in r.model.parameters()]
    result = r.fit()
    assert result.final["fp16_overflow_steps"] == 3 and r.scaler.get_scale() == 2.0**97  # halved at each step
    assert all(torch.equal(x, p.detach()) for x, p in zip(before, r.model.parameters(), strict=True))  # never stepped
