"""The one training loop: SFT and pretraining differ only in where examples come from (conversations with loss masks,
or documents where every token is supervised).

Exactness rules it keeps: packed rows never attend across examples; the loss of an optimizer step is the sum of token
losses divided by the number of supervised tokens of the *whole* step (all micro-batches, all processes: the count is
all-reduced before the first backward), so gradient accumulation, DDP and FSDP give the gradient of one big batch; a step
with no supervised token is skipped and counted, never a NaN or a silent zero.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import protocols
from ..check import check_exported
from ..conversation import Rejects
from ..conversation import load as load_conversations
from ..protocols import ProtocolError
from . import checkpoint as ckpt
from . import heap, sharding
from .attention import MASK_FREE, attention_name, restore_attention, use_training_attention
from .collectives import all_max, all_sum, barrier, init_distributed
from .config import TrainConfig, bf16_supported, default_lr, resolve_device, resolve_precision  # noqa: F401 (bf16_supported: re-exported)
from .data import (
    IGNORE,
    DataError,
    DataStats,
    PackedShard,
    attention_mask,
    conversation_examples,
    document_examples,
    pack,
    read_documents,
)
from .export import export_model
from .fused_loss import Workspace, linear_cross_entropy
from .models import CONFIGS, end_of_turn_like, fit_vocab, load_model, model_protocol
from .report import Metrics, file_digest, plot_loss, write_run_card
from .tied_embedding import GradientHandoff, tie_gradient, untie_gradient


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    skipped_steps: int = 0
    interrupted: bool = False
    check: dict | None = None  # the parity check of the exported model (chatloom.check), when it ran


class SupervisedLoss(nn.Module):
    """Sum of cross-entropy over supervised positions only: the output head runs on those rows alone (on a small model
    the vocabulary projection is the largest matmul, and SFT supervises a fraction of the tokens), fused with the loss
    in row chunks (`fused_loss.py`)."""

    def __init__(self, model, dense: bool = False, handoff: GradientHandoff | None = None,
                 workspace: Workspace | None = None):
        super().__init__()
        self.model = model
        self.dense = dense  # True: always the (B, 1, L, L) block-diagonal mask (the reference in tests)
        self.handoff = handoff  # the head's gradient for a tied input embedding to add into (tied_embedding.py)
        self.workspace = workspace  # the fused loss's large buffers, kept between steps (fused_loss.py)

    def forward(self, ids, positions, segments, targets):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if not self.dense and attention_name(base) in MASK_FREE:
            mask = None  # the attention reads the documents from the position ids (attention.py)
        else:
            device = ids.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else \
                base.get_input_embeddings().weight.dtype
            mask = attention_mask(segments, dtype)
        hidden = base.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    use_cache=False).last_hidden_state
        supervised = targets != IGNORE
        head = base.get_output_embeddings()
        if fusable(head):
            return linear_cross_entropy(hidden[supervised], head.weight, targets[supervised], self.handoff,
                                        self.workspace)
        return F.cross_entropy(head(hidden[supervised]).float(), targets[supervised], reduction="sum")


def fusable(head) -> bool:
    """A plain bias-free linear head on local (not sharded) weights: `linear_cross_entropy` computes it exactly."""
    return type(head) is nn.Linear and head.bias is None and type(head.weight) is nn.Parameter


def add_embedding_noise(model: nn.Module, alpha: float):
    """NEFTune (Jain et al. 2023): while the model is in training mode, add uniform noise in
    [-alpha / sqrt(L * d), +alpha / sqrt(L * d)] to its input embeddings (L tokens per row, d the width), which keeps
    SFT from fitting the exact words of its requests. A forward hook: evaluation and the exported model are untouched."""

    def hook(module, args, output):
        if not module.training:
            return output
        bound = alpha / math.sqrt(output.size(-2) * output.size(-1))
        return output + torch.empty_like(output).uniform_(-bound, bound)

    return model.get_input_embeddings().register_forward_hook(hook)


def freeze_input_embeddings(model: nn.Module, added_rows: int) -> None:
    """Keep the input embeddings at the base's values: SFT then has to decide from what the base's layers make of the
    words, not from new vectors for the words of its own requests. On the quickstart's 7M base this lifted refusal of
    held-out harms that no training request names (seed 0's base: 86.8% -> 92.6%). Not for a model whose rows were just
    added (they would never learn), nor one whose output head shares the embedding matrix (the head must learn)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if added_rows:
        raise ValueError(f"freeze_embeddings: the model got {added_rows} new token rows for the protocol's control "
                         "tokens; frozen, they would never learn (train without it, or from a base that has them)")
    if head is not None and head.weight is emb:
        raise ValueError("freeze_embeddings: this model's output head is its input embedding matrix (tied), which "
                         "must learn")
    emb.requires_grad_(False)


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: allocated CUDA memory on a GPU, resident set size (RSS) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def adamw(params, device: torch.device, sharded: bool = False, **kw) -> torch.optim.AdamW:
    """AdamW as the loop runs it. On CPU the fused kernel (one pass over parameter, gradient and both moments): the
    multi-tensor `foreach` kernel makes several passes and took 4x the CPU time on SmolLM2-sized tensors, about a
    quarter of a 135M model's bf16 step. Sharded (DTensor) parameters and CUDA keep PyTorch's default."""
    if device.type == "cpu" and not sharded:
        return torch.optim.AdamW(params, fused=True, **kw)
    return torch.optim.AdamW(params, **kw)


def clipped_step(optimizer: torch.optim.Optimizer, params: list, max_norm: float) -> torch.Tensor:
    """Clip the gradients to a total 2-norm of `max_norm` (0: no clipping), step, and return the norm before clipping.

    With the fused CPU AdamW the clipping is the optimizer's own gradient divisor (`grad_scale`, the attribute
    GradScaler hands it): one pass over the gradients fewer than `clip_grad_norm_` then `step` (34 of 155 ms on
    SmolLM2-135M's gradients), the same update to float rounding."""
    if max_norm <= 0:
        optimizer.step()
        return torch.zeros(())
    if not all(group.get("fused") for group in optimizer.param_groups):  # (a resumed state can turn it off)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        return norm
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))
    optimizer.grad_scale = ((norm + 1e-6) / max_norm).clamp(min=1.0)  # grad / divisor = clip_grad_norm_'s grad * coef
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale
    return norm


#: `batch_size` 0 (the default): rows per step that hold about this many examples, like a padded batch of 8
AUTO_EXAMPLES_PER_STEP = 8
AUTO_MAX_ROWS = 8


def auto_batch_size(rows: int, examples: int, divisor: int = 1) -> int:
    """Packed rows per micro-batch when none was asked for: an optimizer step holds about `AUTO_EXAMPLES_PER_STEP`
    examples (1 to `AUTO_MAX_ROWS` rows; `divisor` = grad_accum x processes). Packing many short conversations into
    long rows otherwise makes far fewer optimizer steps per epoch than a padded trainer: 150 identity conversations of
    ~55 tokens fill about 9 rows of 1,024 (33 of 256), and 8 rows a step make 4 steps in 3 epochs, where a padded batch
    of 8 makes 57."""
    per_row = examples / max(1, rows)
    return max(1, min(AUTO_MAX_ROWS, round(AUTO_EXAMPLES_PER_STEP / max(per_row, 1e-9) / divisor)))


def lr_lambda(total: int, warmup: int, schedule: str, min_ratio: float):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape
    return f


def check_protocol(cfg: TrainConfig, proto) -> None:
    """Refuse protocols that clash with the base model or tokenizer, before anything trains."""
    trained_with = model_protocol(cfg.model)
    if trained_with and trained_with != cfg.protocol:
        raise ProtocolError(f"{cfg.model}: this model was trained with protocol {trained_with!r} (chatloom.json); "
                            f"--protocol {cfg.protocol} would clash with its control tokens and template")
    tok = proto.tokenizer
    for token in proto.control_tokens:
        if token and tok.encode(token) == [tok.token_id(token)]:
            raise ProtocolError(f"protocol {proto.name}: control token {token!r} is also produced from plain text by "
                                f"tokenizer {tok.name}, so user text could forge it")
    if proto.end_of_turn_id is None:
        raise ProtocolError(f"protocol {proto.name}: end-of-turn token {proto.end_of_turn!r} has no id")


def check_template_source(cfg: TrainConfig) -> None:
    """`--protocol hf` renders with the model's own chat template: refuse a GGUF base without one from its header, before
    its weights are dequantized (tens of seconds for a 270M model), not after."""
    from .. import gguf_meta

    path = Path(str(cfg.model))
    if cfg.protocol != "hf" or cfg.tokenizer is not None or path.suffix != ".gguf" or not path.is_file():
        return
    if gguf_meta.chat_template(path) is None:
        raise ProtocolError(f"{path}: this GGUF file has no chat template (no tokenizer.chat_template in its header; "
                            f"base models usually have none), so --protocol hf has nothing to render with: use "
                            f"--protocol chatml (its control tokens are added to the vocabulary) or another built-in "
                            f"protocol, or --tokenizer DIR whose tokenizer has a chat template")


class Run:
    """A prepared run: model, data, optimizer and schedule; `accumulate` computes one step's gradient, `fit` loops."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.rank, self.world, local_rank, self._created_group = init_distributed()
        self.main = self.rank == 0
        sharding.check(cfg.fsdp, self.world, cfg.lora)
        self.device = resolve_device(cfg.device, local_rank)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        check_template_source(cfg)
        self.model, tok = load_model(cfg.model, tokenizer=cfg.tokenizer, seed=cfg.seed)
        self.protocol = protocols.get(cfg.protocol, tok)
        self.protocol.train_reasoning = cfg.train_reasoning
        check_protocol(cfg, self.protocol)
        trained = str(cfg.model) not in CONFIGS  # a named config has random weights: nothing to copy from
        like = end_of_turn_like(self.protocol, self.model) if trained else {}
        self.added_rows = fit_vocab(self.model, len(tok), like)
        # the run card names the new rows that started as a copy of an old one ({"<|im_end|>": "<|endoftext|>"})
        self.copied_rows = {tok.token_text(new): tok.token_text(src) for new, src in like.items()} \
            if self.added_rows else {}
        self.stats, self.val_stats = DataStats(), DataStats()
        self.shard, self.val_shard = self._load_data()

        self.precision = resolve_precision(cfg.precision, self.device)
        # fp16 overflows without loss scaling: the scaler multiplies the loss, unscales before clipping and skips a step
        # whose gradient has an inf/NaN (counted in `overflow_steps`), lowering the scale
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.overflow_steps = 0
        self.model.to(self.device)
        self.raw_model = self.model
        use_training_attention(self.raw_model, self.device, self.precision)
        if cfg.neftune_alpha:
            add_embedding_noise(self.raw_model, cfg.neftune_alpha)
        self.attention = attention_name(self.raw_model)
        if cfg.freeze_embeddings:
            freeze_input_embeddings(self.raw_model, self.added_rows)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                              modules_to_save=["embed_tokens", "lm_head"] if self.added_rows else None)
            self.model = get_peft_model(self.model, lora)
        # not under FSDP (sharded weights) nor torch.compile (the handoff is a side effect between two backward nodes)
        handoff = None if cfg.fsdp or cfg.compile else tie_gradient(self.raw_model)
        self.tied_gradient = handoff is not None
        # on the CPU under autocast, where glibc hands blocks above 32 MB back to the kernel (heap.py)
        self.loss_workspace = Workspace() if self.keeps_freed_memory == "up to 32 MB" and not cfg.fsdp else None
        self.loss_module: nn.Module = SupervisedLoss(self.model, handoff=handoff, workspace=self.loss_workspace)
        if cfg.fsdp:  # before the optimizer: sharding replaces the parameters with DTensor shards
            sharding.shard(self.loss_module, self.model, self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        self.lr = cfg.lr or default_lr(cfg)
        self.optimizer = adamw(groups, self.device, cfg.fsdp, lr=self.lr, betas=(cfg.beta1, cfg.beta2))
        self.batch_size = cfg.batch_size or auto_batch_size(len(self.shard), self.stats.examples,
                                                            cfg.grad_accum * self.world)
        self.rows_per_step = self.batch_size * cfg.grad_accum * self.world
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(self.shard) / self.rows_per_step))
        self.warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else int(0.05 * self.total_steps)
        schedule = lr_lambda(self.total_steps, self.warmup, cfg.schedule, cfg.min_lr_ratio)
        self.clock_step = 0.0  # under max_seconds: the step the clock says the run is at (the schedule takes the later)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: schedule(max(s, self.clock_step)))
        self.step, self.skipped_steps, self.elapsed_before = 0, 0, 0.0
        if cfg.resume:
            found = ckpt.latest_checkpoint(self.out)
            if found is not None:
                state = ckpt.load_checkpoint(found, self.model, self.optimizer, self.scheduler)
                self.step, self.skipped_steps = state["step"], state.get("skipped_steps", 0)
                self.elapsed_before = state.get("elapsed", 0.0)
                if self.scaler is not None and state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
        if self.world > 1 and not cfg.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            self.loss_module = DistributedDataParallel(self.loss_module, device_ids=[self.device] if
                                                       self.device.type == "cuda" else None)
        if cfg.compile:
            self.loss_module = torch.compile(self.loss_module)
        self._orders: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------------------------------------ data
    def _load_data(self) -> tuple[PackedShard, PackedShard | None]:
        cfg, tok = self.cfg, self.protocol.tokenizer
        pad = tok.eos_token_id if tok.eos_token_id is not None else 0

        def examples(files, stats, what):
            if cfg.mode == "pretrain":
                return document_examples(read_documents(files), tok, cfg.seq_len, stats)
            convs = []
            rejects = Rejects(self.out / "rejects.jsonl") if cfg.on_error == "skip" else None
            for f in files:
                if not Path(f).exists():
                    raise DataError(f"{f}: no such {what} file")
                convs.extend(load_conversations(f, on_error=cfg.on_error, rejects=rejects))
            self.rejected = rejects.count if rejects else 0
            return conversation_examples(convs, self.protocol, cfg.seq_len, stats)

        train_files = cfg.text if cfg.mode == "pretrain" else cfg.data
        if not train_files:
            raise DataError("no training data: pass --data FILE (sft) or --text FILES (pretrain)")
        ex = examples(train_files, self.stats, "training data")
        if ex and cfg.mode == "sft" and cfg.text:  # documents replayed beside the conversations, packed with them
            ex += document_examples(read_documents(cfg.text), tok, cfg.seq_len, self.stats)
        if not ex:
            raise DataError(f"{', '.join(map(str, train_files))}: no supervised tokens in the training data "
                            f"({self.stats.skipped_no_supervised} conversation(s) without a supervised assistant turn "
                            f"within {cfg.seq_len} tokens; mark assistant turns train=true or raise --seq-len)")
        shard = pack(ex, cfg.seq_len, pad, self.stats)
        val = None
        if cfg.val:
            vex = examples(cfg.val, self.val_stats, "validation")
            if not vex:
                raise DataError(f"{', '.join(map(str, cfg.val))}: no supervised tokens in the validation data")
            val = pack(vex, cfg.seq_len, pad, self.val_stats)
        return shard, val

    def step_rows(self, step: int) -> list[int]:
        """The global rows of an optimizer step: a seeded permutation per epoch, read as one endless stream."""
        n, out = len(self.shard), []
        for p in range(step * self.rows_per_step, (step + 1) * self.rows_per_step):
            epoch = p // n
            if epoch not in self._orders:
                self._orders = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(n)}
            out.append(int(self._orders[epoch][p % n]))
        return out

    def my_micro_batches(self, rows: list[int]) -> list[list[int]]:
        b, acc = self.batch_size, self.cfg.grad_accum
        chunks = [rows[i:i + b] for i in range(0, len(rows), b)]
        return chunks[self.rank * acc:(self.rank + 1) * acc]

    def autocast(self):
        if self.precision in ("bf16", "fp16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------------ one step
    def accumulate(self, step: int) -> dict:
        """Forward/backward of every micro-batch of `step` on this process; gradients end up in `.grad` (averaged by
        DDP; under FSDP averaged and reduce-scattered into shards after each micro-batch). Returns the step's loss per
        supervised token, counts, or {"skipped": True}."""
        chunks = self.my_micro_batches(self.step_rows(step))
        local = [sum(self.shard.supervised(c) for c in chunks),
                 sum(int((self.shard.segments[c] >= 0).sum()) for c in chunks)]
        count, tokens = all_sum([float(v) for v in local])
        if count == 0:
            return {"skipped": True, "supervised_tokens": 0, "tokens": int(tokens)}
        self.loss_module.train()
        loss_sum = 0.0
        for i, c in enumerate(chunks):
            batch = self.shard.batch(c, self.device)
            sync = self.world == 1 or i == len(chunks) - 1 or not hasattr(self.loss_module, "no_sync")
            with (contextlib.nullcontext() if sync else self.loss_module.no_sync()):
                with self.autocast():
                    part = self.loss_module(batch["ids"], batch["positions"], batch["segments"], batch["targets"])
                scaled = part * (self.world / count)
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += part.item()
        (loss_sum,) = all_sum([loss_sum])
        return {"skipped": False, "loss": loss_sum / count, "supervised_tokens": int(count), "tokens": int(tokens)}

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        if self.val_shard is None:
            return None
        self.loss_module.eval()
        bs, n = self.batch_size, len(self.val_shard)
        rows = list(range(self.rank, n, self.world))
        batches = [rows[i:i + bs] for i in range(0, len(rows), bs)]
        evaluate = SupervisedLoss(self.model, workspace=self.loss_workspace)
        if self.cfg.fsdp:  # the sharded root gathers the weights, and each forward is a collective: same count everywhere
            evaluate = self.loss_module
            batches += [[]] * (math.ceil(math.ceil(n / self.world) / bs) - len(batches))
        total, count = 0.0, 0.0
        for c in batches:
            batch = self.val_shard.batch(c or [0], self.device)  # an empty batch: a forward for the collective only
            with self.autocast():
                part = evaluate(batch["ids"], batch["positions"], batch["segments"], batch["targets"]).item()
            if c:
                total += part
                count += self.val_shard.supervised(c)
        total, count = all_sum([total, count])
        return total / count

    # ------------------------------------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        cfg = self.cfg
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config()
        metrics = Metrics(self.out / "metrics.jsonl", enabled=self.main, keep_until_step=self.step if cfg.resume else -1)
        started = time.perf_counter()
        last_loss, val = None, None
        if self.step == 0 and self.val_shard is not None:
            val = self.validation_loss()
            metrics.log(step=0, val_loss=val)
        interrupted, out_of_time = False, False
        with self._progress() as progress, heap.keep_freed_memory(
                bool(self.keeps_freed_memory), large=self.keeps_freed_memory == "all"):
            task = progress.add_task("train", total=self.total_steps, completed=self.step, loss="-", tps="-")
            while self.step < self.total_steps and not out_of_time:
                t0 = time.perf_counter()
                out = self.accumulate(self.step)
                used = self._elapsed(started) / cfg.max_seconds if cfg.max_seconds > 0 else 0.0  # share of the time
                if out["skipped"]:
                    self.skipped_steps += 1
                    self.zero_grad()
                else:
                    params = [p for p in self.model.parameters() if p.requires_grad]
                    lr = self.scheduler.get_last_lr()[0]
                    if self.scaler is not None:
                        self.scaler.unscale_(self.optimizer)
                        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 \
                            else torch.zeros(())
                        scale = self.scaler.get_scale()
                        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) on an inf/NaN gradient
                        self.scaler.update()
                        self.overflow_steps += int(self.scaler.get_scale() < scale)
                    else:
                        norm = clipped_step(self.optimizer, params, cfg.max_grad_norm)
                    self.clock_step = self.total_steps * used
                    self.scheduler.step()
                    self.zero_grad()
                    last_loss = out["loss"]
                dt = time.perf_counter() - t0
                self.step += 1
                row = {"step": self.step, "tokens": out["tokens"], "supervised_tokens": out["supervised_tokens"],
                       "seconds": round(dt, 4), "supervised_tok_s": round(out["supervised_tokens"] / dt, 1)}
                if out["skipped"]:
                    row["skipped"] = True
                else:
                    row.update(loss=out["loss"], lr=lr, grad_norm=sharding.scalar(norm))
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                    val = self.validation_loss()
                    if val is not None:
                        row["val_loss"] = val
                metrics.log(**row)
                if cfg.max_seconds > 0:  # the clock decides: steps at the end = steps so far / share of time used
                    out_of_time = used >= 1.0
                    progress.update(task, total=self.step if out_of_time else
                                    min(self.total_steps, max(self.step + 1, round(self.step / max(used, 1e-9)))))
                progress.update(task, advance=1, loss=f"{last_loss:.4f}" if last_loss is not None else "-",
                                tps=f"{row['supervised_tok_s']:.0f}")
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self._checkpoint(started)
                if cfg.interrupt_after and self.step >= cfg.interrupt_after:
                    interrupted = True
                    break
        seconds = self.elapsed_before + time.perf_counter() - started
        result = TrainResult(self.out, self.step, data=self.stats.as_dict(), skipped_steps=self.skipped_steps,
                             interrupted=interrupted)
        if interrupted:
            self._finish()
            return result
        val = self.validation_loss()
        final = {"train_loss": last_loss, "val_loss": val, "steps": self.step, "skipped_steps": self.skipped_steps,
                 "seconds": round(seconds, 2), "stopped_by": "time" if out_of_time else "steps"}
        if self.scaler is not None:
            final["fp16_overflow_steps"] = self.overflow_steps
        if val is not None:
            metrics.log(step=self.step, val_loss=val)
        steps_rows = [r for r in metrics.rows if "supervised_tokens" in r]
        if steps_rows:
            busy = max(1e-9, sum(r["seconds"] for r in steps_rows))
            final["supervised_tok_s"] = round(sum(r["supervised_tokens"] for r in steps_rows) / busy, 1)
            final["tok_s"] = round(sum(r["tokens"] for r in steps_rows) / busy, 1)  # all processes, padding excluded
        final["peak_memory_gb"] = round(all_max(peak_memory_gb(self.device)), 3)  # the largest of the processes
        result.final = final
        weights = sharding.full_model_state(self.model) if cfg.fsdp else None  # gathered from all processes
        restore_attention(self.raw_model)
        untie_gradient(self.raw_model)
        if self.main:
            export_model(self.model, self.protocol, self.out, state_dict=weights,
                         extra={"mode": cfg.mode, "base_model": cfg.model, "steps": self.step})
            plot_loss(metrics.rows, self.out / "loss.png", title=f"chatloom {cfg.mode}: {cfg.model}")
            result.check = check_exported(self.out, cfg.data if cfg.mode == "sft" else ()).as_dict()
            write_run_card(self.out, {**self._card(final, seconds), "check": result.check})
        self._finish()
        return result

    # ------------------------------------------------------------------------------------------------ helpers
    def _progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} sup tok/s"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        disable=not (self.cfg.progress and self.main))

    def _elapsed(self, started: float) -> float:
        """Seconds this run has trained (across resumes), the same on every process."""
        return all_max(self.elapsed_before + time.perf_counter() - started)

    def _checkpoint(self, started: float) -> None:
        model_state = sharding.full_model_state(self.model)  # every process: gathers the shards under FSDP
        optimizer_state = sharding.full_optimizer_state(self.model, self.optimizer)
        if self.main:
            ckpt.save_checkpoint(self.out, self.step, model_state, optimizer_state, self.scheduler,
                                 {"skipped_steps": self.skipped_steps,
                                  "elapsed": self.elapsed_before + time.perf_counter() - started,
                                  "scaler": self.scaler.state_dict() if self.scaler is not None else None},
                                 keep=self.cfg.keep_checkpoints)
        barrier()

    def resolved(self) -> dict:
        return {**self.cfg.to_dict(), "resolved": {
            "lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup, "precision": self.precision,
            "world_size": self.world, "device": str(self.device), "batch_size": self.batch_size,
            "rows_per_step": self.rows_per_step, "steps_per_epoch": round(len(self.shard) / self.rows_per_step, 2),
            "examples_per_step": round(self.stats.examples / max(1, len(self.shard)) * self.rows_per_step, 1),
            "attention": self.attention,
            "vocab_size": len(self.protocol.tokenizer), "added_embedding_rows": self.added_rows,
            "embedding_rows_copied": self.copied_rows, "keep_freed_memory": self.keeps_freed_memory,
            "tied_embedding_gradient": self.tied_gradient, "loss_buffers_kept": self.loss_workspace is not None}}

    def zero_grad(self) -> None:
        """Drop the gradients; the output head's goes back to the loss's workspace for the next step to write into."""
        if self.loss_workspace is not None:
            head = self.raw_model.get_output_embeddings()
            if head is not None:
                self.loss_workspace.recycle(head.weight)
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def keeps_freed_memory(self) -> str | bool:
        """On CPU, glibc keeps each step's freed tensors for the next (heap.py): "all" in float32, "up to 32 MB" under
        autocast (larger kept blocks would fragment the heap); False elsewhere."""
        if self.device.type != "cpu" or not heap.available():
            return False
        return "all" if self.precision == "fp32" else "up to 32 MB"

    def _write_config(self) -> None:
        import yaml

        (self.out / "config.yaml").write_text(yaml.safe_dump(self.resolved(), sort_keys=False), encoding="utf-8")

    def _card(self, final: dict, seconds: float) -> dict:
        cfg = self.cfg
        files = cfg.text if cfg.mode == "pretrain" else [*cfg.data, *cfg.text]
        hashes = {str(f): file_digest(f) for f in [*files, *cfg.val]}
        n_params = sum(p.numel() for p in self.model.parameters())
        return {"config": cfg.to_dict(), "resolved": self.resolved()["resolved"], "final": final,
                "data": {**self.stats.as_dict(), "packed_digest": self.shard.digest(), "files": hashes,
                         "validation": self.val_stats.as_dict() if self.val_shard is not None else None},
                "parameters": n_params, "steps": self.step, "seconds": seconds, "device": str(self.device),
                "precision": self.precision, "world_size": self.world,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _finish(self) -> None:
        restore_attention(self.raw_model)
        untie_gradient(self.raw_model)
        if self._created_group and dist.is_initialized():
            barrier()
            dist.destroy_process_group()


def train(cfg: TrainConfig) -> TrainResult:
    """Run a training job end to end (SFT or pretraining) and write the model directory to `cfg.out`."""
    result = Run(cfg).fit()
    # the run sits in reference cycles (its schedule's closure; frames held by tracebacks caught inside libraries): free
    # its model, optimizer state and gradients now, not at a later full collection (a quickstart evaluates next)
    gc.collect()
    return result


def dumps_result(result: TrainResult) -> str:
    return json.dumps({"out_dir": str(result.out_dir), "steps": result.steps, "final": result.final,
                       "data": result.data, "skipped_steps": result.skipped_steps,
                       "check_ok": None if result.check is None else result.check["ok"]}, default=str)
