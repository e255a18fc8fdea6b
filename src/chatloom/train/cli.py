"""`chatloom train sft|pretrain`: flags or a YAML config (flags win) -> TrainConfig -> train(). Thin on purpose."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..cli_error import fail

app = typer.Typer(help="Train: SFT on conversations or pretraining on text, one loop.", no_args_is_help=True)


def _run(config: Path | None, **flags):
    from ..conversation import ValidationError
    from ..protocols import ProtocolError
    from .config import TrainConfig
    from .data import DataError
    from .loop import Run, dumps_result
    from .models import ModelNotFound

    keep_false = ("train_reasoning",)  # flags whose False is an explicit choice (the default is True)
    flags = {k: v for k, v in flags.items() if v is not None and v != [] and (v is not False or k in keep_false)}
    try:
        cfg = TrainConfig.from_yaml(config, **flags) if config else TrainConfig(**flags)
        result = Run(cfg).fit()
    except (ModelNotFound, DataError, ProtocolError, ValidationError, FileNotFoundError, ValueError) as e:
        fail(e)
    if result.out_dir is not None and int(__import__("os").environ.get("RANK", "0")) == 0:
        Console().print(dumps_result(result), highlight=False, soft_wrap=True)
    if result.check is not None and not result.check["ok"]:  # weights are written; the parity table said why
        raise typer.Exit(1)


COMMON = dict(
    out=typer.Option(None, "--out", "-o", help="Run / model output directory."),
    val=typer.Option(None, "--val", help="Validation file(s)."),
    max_steps=typer.Option(None, "--max-steps", help="Optimizer steps (default: --epochs)."),
    max_seconds=typer.Option(None, "--max-seconds", help="Stop after this many seconds of training (the LR schedule "
                             "runs to its end by then); with --max-steps, whichever comes first."),
    epochs=typer.Option(None, "--epochs"),
    seq_len=typer.Option(None, "--seq-len", help="Packed row length in tokens."),
    lr=typer.Option(None, "--lr", help="Peak learning rate (default: 3e-4 from scratch and pretraining, 5e-5 for full SFT "
                    "of a trained model, 2e-4 with --lora; the run card gives the one used)."),
    seed=typer.Option(None, "--seed"),
    batch_size=typer.Option(None, "--batch-size", help="Packed rows per micro-batch per process (default: rows that hold about 8 conversations a step, 1-8)."),
    grad_accum=typer.Option(None, "--grad-accum"),
    precision=typer.Option(None, "--precision", help="auto | bf16 | fp16 (CUDA, loss scaling) | fp32"),
    eval_every=typer.Option(None, "--eval-every"),
    save_every=typer.Option(None, "--save-every"),
    resume=typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    lora=typer.Option(False, "--lora", help="Train LoRA adapters (peft); merged on export."),
    gradient_checkpointing=typer.Option(False, "--gradient-checkpointing"),
    compile=typer.Option(False, "--compile", help="torch.compile the forward/loss."),
    fsdp=typer.Option(False, "--fsdp", help="Under torchrun: shard the model across processes (FSDP2), for models "
                                            "that do not fit one device."),
    tokenizer=typer.Option(None, "--tokenizer"),
    config=typer.Option(None, "--config", help="YAML file of TrainConfig fields (flags override it)."),
)


@app.command()
def sft(model: str = typer.Option(None, "--model", "-m", help="Named config (tiny, small), model dir, .gguf or Hub id."),
        data: list[str] = typer.Option(None, "--data", help="Conversation file(s): JSONL, Parquet, dir of shards."),
        protocol: str = typer.Option(None, "--protocol", "-p", help="gpt4o | chatml | llama3 | hf"),
        on_error: str = typer.Option(None, "--on-error", help="Bad records: fail | skip (counted, rejects.jsonl)."),
        text: list[str] = typer.Option(None, "--text", help="Documents mixed into the conversations (every token "
                                       "supervised), e.g. pretraining text replayed so the base does not forget it."),
        out: Path = COMMON["out"], val: list[str] = COMMON["val"], max_steps: int = COMMON["max_steps"],
        max_seconds: float = COMMON["max_seconds"], epochs: float = COMMON["epochs"], seq_len: int = COMMON["seq_len"], lr: float = COMMON["lr"],
        seed: int = COMMON["seed"], batch_size: int = COMMON["batch_size"], grad_accum: int = COMMON["grad_accum"],
        precision: str = COMMON["precision"], eval_every: int = COMMON["eval_every"],
        save_every: int = COMMON["save_every"], resume: bool = COMMON["resume"], lora: bool = COMMON["lora"],
        gradient_checkpointing: bool = COMMON["gradient_checkpointing"], compile: bool = COMMON["compile"],
        fsdp: bool = COMMON["fsdp"], tokenizer: str = COMMON["tokenizer"], config: Path = COMMON["config"],
        no_train_reasoning: bool = typer.Option(False, "--no-train-reasoning", help="Keep assistant reasoning_content "
                                                "in the ids but out of the loss mask (default: supervised)."),
        neftune_alpha: float = typer.Option(None, "--neftune-alpha", help="NEFTune: noise of scale alpha/sqrt(L*d) on "
                                            "the input embeddings while training (e.g. 5; default 0: off)."),
        freeze_embeddings: bool = typer.Option(False, "--freeze-embeddings", help="Keep the input embeddings at the "
                                               "base's values (full fine-tuning of an untied model that has the "
                                               "protocol's tokens).")):
    """Supervised fine-tuning on conversations (loss on assistant turns, their reasoning, and their end-of-turn token)."""
    _run(config, mode="sft", model=model, data=data, text=text, protocol=protocol, on_error=on_error,
         out=str(out) if out else None, val=val, max_steps=max_steps, max_seconds=max_seconds, epochs=epochs, seq_len=seq_len, lr=lr, seed=seed,
         batch_size=batch_size, grad_accum=grad_accum, precision=precision, eval_every=eval_every,
         save_every=save_every, resume=resume, lora=lora, gradient_checkpointing=gradient_checkpointing,
         compile=compile, fsdp=fsdp, tokenizer=tokenizer, train_reasoning=False if no_train_reasoning else None,
         neftune_alpha=neftune_alpha, freeze_embeddings=freeze_embeddings)


@app.command()
def pretrain(more_text: list[str] = typer.Argument(None, metavar="[FILES]...", help="More text files (so `--text a b c` works)."),
             model: str = typer.Option(None, "--model", "-m", help="Named config (tiny, small) or model dir."),
             text: list[str] = typer.Option(None, "--text", help="Text files (.txt: a document; .jsonl: 'text' per line)."),
             protocol: str = typer.Option(None, "--protocol", "-p", help="Control tokens to reserve (default chatml)."),
             out: Path = COMMON["out"], val: list[str] = COMMON["val"], max_steps: int = COMMON["max_steps"],
             max_seconds: float = COMMON["max_seconds"], epochs: float = COMMON["epochs"], seq_len: int = COMMON["seq_len"], lr: float = COMMON["lr"],
             seed: int = COMMON["seed"], batch_size: int = COMMON["batch_size"],
             grad_accum: int = COMMON["grad_accum"], precision: str = COMMON["precision"],
             eval_every: int = COMMON["eval_every"], save_every: int = COMMON["save_every"],
             resume: bool = COMMON["resume"], gradient_checkpointing: bool = COMMON["gradient_checkpointing"],
             compile: bool = COMMON["compile"], fsdp: bool = COMMON["fsdp"], tokenizer: str = COMMON["tokenizer"],
             config: Path = COMMON["config"]):
    """Pretraining on documents (every token supervised): the same loop, different data."""
    _run(config, mode="pretrain", model=model, text=[*(text or []), *(more_text or [])], protocol=protocol, out=str(out) if out else None, val=val,
         max_steps=max_steps, max_seconds=max_seconds, epochs=epochs, seq_len=seq_len, lr=lr, seed=seed, batch_size=batch_size,
         grad_accum=grad_accum, precision=precision, eval_every=eval_every, save_every=save_every, resume=resume,
         gradient_checkpointing=gradient_checkpointing, compile=compile, fsdp=fsdp, tokenizer=tokenizer)
