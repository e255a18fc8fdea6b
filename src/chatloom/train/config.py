"""TrainConfig: every knob of a run in one dataclass, loadable from YAML and written back (resolved) to the run dir."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


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
    batch_size: int = 8  # packed rows per micro-batch per process
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = -1  # -1: 5% of the steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 0
    eval_every: int = 0  # validation loss every N steps (0: only at the start and the end)
    save_every: int = 0  # checkpoint every N steps (0: none until the end)
    keep_checkpoints: int = 2
    resume: bool = False
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    gradient_checkpointing: bool = False
    compile: bool = False
    fsdp: bool = False  # under torchrun (2+ processes): shard parameters, gradients and optimizer state (FSDP2)
    device: str = "auto"
    progress: bool = True
    on_error: str = "fail"  # bad conversation records: fail | skip (counted, written to out/rejects.jsonl)
    interrupt_after: int = 0  # testing: stop after this many steps as if the process was killed

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
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
