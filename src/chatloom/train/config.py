"""TrainConfig: every knob of a run in one dataclass, loadable from YAML and written back (resolved) to the run dir.

Every field is checked when the config is built (`__post_init__`): a wrong type, a value out of range or a name that is
not one of the allowed choices raises `ValueError` naming the field and what it accepts, before any model is loaded.
Precision is checked against the device the run will use: `fp16` needs a CUDA GPU (loss scaling with
`torch.amp.GradScaler`) or a CPU whose oneDNN reports float16 support; `bf16` on a CUDA GPU without bfloat16 says to
use `fp16`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

MODES = ("sft", "pretrain")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ON_ERROR = ("fail", "skip")
DEVICE_TYPES = ("cpu", "cuda")


@dataclass
class TrainConfig:
    out: str = "runs/train"
    mode: str = "sft"  # "sft" (conversations with loss masks) | "pretrain" (documents, every token supervised)
    model: str = "tiny"  # named config (chatloom.train.models.CONFIGS), model directory, .gguf file or Hub id
    tokenizer: str | None = None  # override; default: the model's own (named configs: chatloom's bundled BPE)
    protocol: str = "chatml"
    data: list[str] = field(default_factory=list)  # sft: conversation files (JSONL / Parquet / dirs of shards)
    val: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # pretrain: text files (.txt: one document; .jsonl: "text" per line);
    # sft: documents mixed into the conversations (every token supervised), e.g. pretraining data replayed against forgetting
    max_steps: int = 0  # 0: run `epochs` epochs
    max_seconds: float = 0.0  # > 0: also stop when the loop has run this long; the LR schedule follows the clock too
    epochs: float = 1.0
    seq_len: int = 1024
    batch_size: int = 0  # packed rows per micro-batch per process; 0: auto, rows that hold about 8 examples a step (1-8)
    grad_accum: int = 1
    lr: float = 0.0  # 0: by what the run trains (`default_lr`): 3e-4 from scratch, 5e-5 full SFT of a trained model
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = -1  # -1: 5% of the steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    max_grad_norm: float = 1.0
    neftune_alpha: float = 0.0  # > 0: NEFTune, uniform noise of scale alpha / sqrt(L * d) on the input embeddings while training
    freeze_embeddings: bool = False  # sft: the input embeddings keep the base's values (see loop.freeze_input_embeddings)
    precision: str = "auto"  # auto | bf16 | fp16 (CUDA, with loss scaling) | fp32
    seed: int = 0
    eval_every: int = 0  # validation loss every N steps (0: only at the start and the end)
    save_every: int = 0  # checkpoint every N steps (0: none until the end)
    keep_checkpoints: int = 2  # 0: keep all
    resume: bool = False
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    gradient_checkpointing: bool = False
    compile: bool = False
    fsdp: bool = False  # under torchrun (2+ processes): shard parameters, gradients and optimizer state (FSDP2)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True
    train_reasoning: bool = True  # sft: supervise assistant reasoning_content (off: in the ids, not in the mask)
    on_error: str = "fail"  # bad conversation records: fail | skip (counted, written to out/rejects.jsonl)
    interrupt_after: int = 0  # testing: stop after this many steps as if the process was killed

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config field(s) {unknown}")
        for name in FLOATS:  # YAML 1.1 reads `lr: 3e-4` (no dot) as a string
            if isinstance(data.get(name), str):
                try:
                    data[name] = float(data[name])
                except ValueError:
                    pass  # validate() names the field
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: learning rates when `lr` is 0, by what the run trains (measured on SmolLM2-135M-Instruct learning a new identity from
#: 150 conversations in 3 epochs: 3e-4 made it answer "How many days are there in a week?" with its maker's name, 4 of
#: 10 ordinary questions kept; 5e-5 kept 9 of 10 and learned the identity 20/20; 2e-5 only 14/20)
LR_FROM_SCRATCH = 3e-4  # pretraining, or a named config (randomly initialised)
LR_LORA = 2e-4  # adapters on a trained model
LR_FINE_TUNE = 5e-5  # every weight of a trained model


def default_lr(cfg: TrainConfig) -> float:
    """The learning rate a run with `lr: 0` uses: a trained model fine-tuned in full forgets what it knew at the rate
    that trains a new one, so it gets a lower one."""
    from .models import CONFIGS

    if cfg.mode == "pretrain" or cfg.model in CONFIGS:
        return LR_FROM_SCRATCH
    return LR_LORA if cfg.lora else LR_FINE_TUNE


# ---------------------------------------------------------------------------------------------------------- checks
#: field -> (minimum, maximum, whether the minimum itself is allowed); None: unbounded
INTS = {"max_steps": (0, None), "seq_len": (2, None), "batch_size": (0, None), "grad_accum": (1, None),
        "warmup_steps": (-1, None), "seed": (0, 2**32 - 1), "eval_every": (0, None), "save_every": (0, None),
        "keep_checkpoints": (0, None), "lora_r": (1, None), "lora_alpha": (1, None), "interrupt_after": (0, None)}
FLOATS = {"max_seconds": (0.0, None, True), "epochs": (0.0, None, False), "lr": (0.0, None, True),
          "min_lr_ratio": (0.0, 1.0, True), "weight_decay": (0.0, None, True), "beta1": (0.0, 1.0, True),
          "beta2": (0.0, 1.0, True), "max_grad_norm": (0.0, None, True),
          "neftune_alpha": (0.0, None, True)}
BOOLS = ("resume", "lora", "gradient_checkpointing", "compile", "fsdp", "progress", "train_reasoning", "freeze_embeddings")
CHOICES = {"mode": MODES, "schedule": SCHEDULES, "precision": PRECISIONS, "on_error": ON_ERROR}
PATH_LISTS = ("data", "val", "text")


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError for the first bad field (normalises path-like values to str, tuples of paths to lists)."""
    for name in ("out", "model", "protocol"):
        value = getattr(cfg, name)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
            setattr(cfg, name, value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    if cfg.tokenizer is not None:
        if isinstance(cfg.tokenizer, os.PathLike):
            cfg.tokenizer = os.fspath(cfg.tokenizer)
        if not isinstance(cfg.tokenizer, str) or not cfg.tokenizer.strip():
            raise ValueError(f"tokenizer: expected a path or name (or None for the model's own), got {cfg.tokenizer!r}")
    for name in PATH_LISTS:
        value = getattr(cfg, name)
        if isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{name}: expected a list of files, got one value {value!r} (write [{value!r}])")
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in value):
            raise ValueError(f"{name}: expected a list of file paths, got {value!r}")
        setattr(cfg, name, [os.fspath(v) for v in value])
    for name, allowed in CHOICES.items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    from ..protocols import NAMES

    if cfg.protocol not in NAMES:
        raise ValueError(f"protocol: {cfg.protocol!r} is not one of {', '.join(NAMES)}")
    for name, (low, high) in INTS.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"{low} .. {high}"
            raise ValueError(f"{name}: {value} is out of range (allowed: {bound})")
    for name, (low, high, low_ok) in FLOATS.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if value < low or (value == low and not low_ok) or (high is not None and (value > high or
                                                                                  (name.startswith("beta") and value == high))):
            bound = (">= " if low_ok else "> ") + str(low)
            if high is not None:
                bound += f" and {'<' if name.startswith('beta') else '<='} {high}"
            raise ValueError(f"{name}: {value} is out of range (allowed: {bound})")
        setattr(cfg, name, float(value))
    for name in BOOLS:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name}: expected true or false, got {getattr(cfg, name)!r}")
    device = resolve_device(cfg.device)
    if cfg.freeze_embeddings and (cfg.lora or cfg.fsdp):
        raise ValueError("freeze_embeddings: for full fine-tuning on one device or under DDP (with --lora the base's "
                         "embeddings are frozen already; with --fsdp it is not supported)")
    if cfg.fsdp and cfg.precision == "fp16":
        raise ValueError("precision: fp16 with --fsdp is not supported (the loss scaler's overflow check would see only "
                         "this process's gradient shard); use bf16 or fp32 with --fsdp")
    check_precision(cfg.precision, device)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK if CUDA is available, else cpu; otherwise a checked `cpu` / `cuda` / `cuda:N`."""
    if not isinstance(device, str):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise ValueError(f"device: {device!r} is not one of auto, cpu, cuda, cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} but CUDA is not available here (use auto or cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return parsed


def cpu_fp16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run, saying what to use instead."""
    if precision == "fp16" and device.type == "cpu" and not cpu_fp16_supported():
        raise ValueError("precision: fp16 is for CUDA GPUs without bfloat16 (it trains with loss scaling); this CPU has "
                         "no float16 support: use bf16 (" + ("supported here" if bf16_supported(device) else
                                                            "emulated, slow here") + ") or fp32, or auto")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision: bf16 is not supported by {torch.cuda.get_device_name(device)}: use fp16 "
                         "(with loss scaling) or fp32, or auto")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the device supports it, else fp32 (never fp16: it needs loss scaling, ask for it)."""
    if precision != "auto":
        check_precision(precision, device)
        return precision
    return "bf16" if bf16_supported(device) else "fp32"
