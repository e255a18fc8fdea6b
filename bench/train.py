"""Benchmark: chatloom's trainer vs TRL `SFTTrainer` on the same tiny Llama, tokenizer, conversations and steps (CPU).

All trainers get the *same* protocol-rendered token ids and assistant masks (TRL through a pre-tokenized dataset with
`assistant_masks`, i.e. assistant-only loss), the same initial weights, optimizer settings and number of optimizer steps.
TRL runs (a) padding, (b) `packing=True` (BFD), (c) `packing=True, packing_strategy="wrapped"` (conversations attend to
each other). Validation loss is measured by one evaluator (chatloom's exact per-supervised-token loss on packed rows
with a block-diagonal mask) for every trained model. Prints JSON. Timings on a shared CPU are noisy: read the ratios.

    python bench/train.py [--convs 3200] [--steps 20] [--rows 4] [--seq-len 512] [--precision fp32|bf16]
    python bench/train.py --long-rows [--lengths 1024,16384] [--tokens 16384] [--steps 6] [--precision bf16]

`--precision bf16` runs every trainer with bf16 autocast (TRL: `bf16=True`); weights stay fp32 in all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from chatloom import protocols
from chatloom.conversation import Conversation, Message, save
from chatloom.quickstart.corpus import stdlib_documents
from chatloom.train import TrainConfig
from chatloom.train.data import DataStats, conversation_examples, pack
from chatloom.train.loop import Run, SupervisedLoss
from chatloom.train.models import build_model, fit_vocab, load_model


def make_conversations(n: int, seed: int = 0) -> list[Conversation]:
    """Mixed lengths: 1-3 turns, answers from 5 to ~250 words of real prose (stdlib documentation)."""
    rng = random.Random(seed)
    docs = [d for _, d in zip(range(4000), stdlib_documents(), strict=False)]
    convs = []
    for _ in range(n):
        msgs = [Message("system", "You are a helpful assistant.")] if rng.random() < 0.3 else []
        for _ in range(rng.choice([1, 1, 2, 3])):
            words = rng.choice(docs).split()
            start = rng.randrange(max(1, len(words) - 10))
            q = " ".join(words[start:start + rng.randint(4, 20)])
            length = int(rng.choice([5, 15, 40, 80, 150, 250]) * rng.uniform(0.5, 1.0))
            a = " ".join(words[start:start + length]) or "Yes."
            msgs += [Message("user", f"Explain: {q}"), Message("assistant", a)]
        convs.append(Conversation(msgs))
    return convs


def val_loss(model, val_shard, batch=8) -> float:
    loss, total, count = SupervisedLoss(model).eval(), 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val_shard), batch):
            rows = range(i, min(i + batch, len(val_shard)))
            b = val_shard.batch(rows)
            total += loss(b["ids"], b["positions"], b["segments"], b["targets"]).item()
            count += val_shard.supervised(rows)
    return total / count


def run_chatloom(base: Path, train_file: Path, out: Path, a, precision: str, compile_: bool = False) -> dict:
    t0 = time.perf_counter()
    run = Run(TrainConfig(out=str(out), model=str(base), data=[str(train_file)], seq_len=a.seq_len, batch_size=a.rows,
                          max_steps=a.steps, lr=a.lr, warmup_steps=2, weight_decay=0.1, precision=precision,
                          compile=compile_, progress=False, seed=0))
    setup = time.perf_counter() - t0
    sup, t_train, warm = 0, time.perf_counter(), None
    for step in range(a.steps):
        if step == 2:  # after the first two steps (torch.compile compiles there): the steady rate
            warm = (time.perf_counter(), sup)
        out_step = run.accumulate(step)
        params = [p for p in run.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        sup += out_step["supervised_tokens"]
    end = time.perf_counter()
    steady = round((sup - warm[1]) / (end - warm[0]), 1) if warm else None
    return {"model": run.model, "train_seconds": end - t_train, "setup_seconds": setup, "supervised_tokens": sup,
            "padding_waste": run.stats.padding_waste, "steady_supervised_tok_s": steady}


def run_trl(base: Path, rendered, tok, out: Path, a, mode: str, batch: int, precision: str) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list([{"input_ids": r.ids[:a.seq_len], "assistant_masks": r.mask[:a.seq_len]} for r in rendered])
    kw = dict(packing=mode != "padding")
    if mode == "wrapped":
        kw["packing_strategy"] = "wrapped"
    cfg = SFTConfig(output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=batch, learning_rate=a.lr,
                    warmup_steps=2, weight_decay=0.1, adam_beta2=0.95, lr_scheduler_type="cosine", max_grad_norm=1.0,
                    max_length=a.seq_len, bf16=precision == "bf16", fp16=False, gradient_checkpointing=False, use_cpu=True,
                    report_to=[], logging_steps=1000, save_strategy="no", seed=0, dataloader_num_workers=0,
                    disable_tqdm=True, **kw)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, attn_implementation="sdpa")
    t0 = time.perf_counter()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok.hf)
    setup = time.perf_counter() - t0
    counted = {"sup": 0}
    inner = trainer.data_collator

    def counting(features):
        b = inner(features)
        counted["sup"] += int((b["labels"][:, 1:] != -100).sum())
        return b

    trainer.data_collator = counting
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its summary dict; stdout is the JSON result only
        trainer.train()
    train_s = time.perf_counter() - t1
    return {"model": trainer.model, "train_seconds": train_s, "setup_seconds": setup, "supervised_tokens": counted["sup"]}


def long_rows_child(length: int, attention: str, a) -> dict:
    """One configuration of `--long-rows` (its own process, so peak RSS is its own): the `tiny` model on the same short
    conversations, rows of `length` tokens, `a.tokens // length` rows per step, dense mask or per-document attention."""
    import resource

    work = Path(tempfile.mkdtemp(prefix="chatloom-long-"))
    save(make_conversations(a.convs), work / "train.jsonl")
    run = Run(TrainConfig(out=str(work / "run"), model="tiny", data=[str(work / "train.jsonl")], seq_len=length,
                          batch_size=max(1, a.tokens // length), max_steps=a.steps, lr=1e-3, warmup_steps=0,
                          precision=a.precision, progress=False, seed=0))
    run.loss_module.dense = attention == "dense"
    if attention == "buckets":  # per-document buckets at every row length (no short-row mask)
        from chatloom.train import attention as attention_module

        attention_module.DENSE_UP_TO = 0
    sup, losses, warm = 0, [], None
    for step in range(a.steps):
        if step == 2:
            warm = (time.perf_counter(), sup, time.process_time())
        out = run.accumulate(step)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        sup += out["supervised_tokens"]
        losses.append(round(out["loss"], 5))
    end = time.perf_counter()
    return {"row_tokens": length, "rows_per_step": run.cfg.batch_size, "attention": attention,
            "supervised_tok_s": round((sup - warm[1]) / (end - warm[0]), 1),
            "supervised_tok_per_cpu_s": round((sup - warm[1]) / (time.process_time() - warm[2]), 1), "losses": losses,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
            "packed_rows": len(run.shard), "padding_waste": round(run.stats.padding_waste, 4)}


def long_rows(a) -> None:
    """Rows of 1,024 vs 16,384 tokens (`--lengths`) of the same short conversations, the same tokens per step: the dense
    (B, 1, L, L) mask ("dense", the old path) vs per-document attention ("documents"). Prints JSON."""
    import subprocess

    results = []
    for attention in a.attention.split(","):
        for length in [int(x) for x in a.lengths.split(",")]:
            cmd = [sys.executable, __file__, "--long-rows-child", f"{length}:{attention}", "--convs", str(a.convs),
                   "--steps", str(a.steps), "--tokens", str(a.tokens), "--precision", a.precision]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    by = {(r["attention"], r["row_tokens"]): r for r in results}
    ratios = {}
    for attention in a.attention.split(","):
        for rate in ("supervised_tok_s", "supervised_tok_per_cpu_s"):
            rates = [by[(attention, int(x))][rate] for x in a.lengths.split(",") if (attention, int(x)) in by]
            if len(rates) >= 2:
                ratios[f"{attention} ({rate})"] = round(max(rates) / min(rates), 2)
    print(json.dumps({"machine": {"threads": torch.get_num_threads(),
                                  "note": "shared CPU (other jobs running): absolute numbers are noisy"},
                      "setup": {"model": "tiny", "conversations": a.convs, "tokens_per_step": a.tokens,
                                "cpu_s": "process CPU time (both threads), less sensitive to other jobs than wall time",
                                "steps": a.steps, "timed": "steps 3.. (after two warm-up steps)",
                                "precision": a.precision},
                      "results": results, "slowest_vs_fastest_row_length": ratios}, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--long-rows", action="store_true", help="rows of --lengths tokens, dense mask vs per-document "
                   "attention, the same tokens per step (tiny model)")
    p.add_argument("--lengths", default="1024,16384")
    p.add_argument("--attention", default="dense,documents", help="dense (the old (B, 1, L, L) mask), documents "
                   "(the default path), buckets (per-document buckets also for short rows)")
    p.add_argument("--tokens", type=int, default=16384, help="--long-rows: tokens per optimizer step")
    p.add_argument("--long-rows-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--convs", type=int, default=3200)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=4, help="packed rows of --seq-len per optimizer step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--only", default="chatloom,chatloom_compile,trl_padding,trl_bfd,trl_wrapped")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the same for every trainer")
    a = p.parse_args(argv)
    if a.long_rows_child:
        length, attention = a.long_rows_child.split(":")
        print(json.dumps(long_rows_child(int(length), attention, a)))
        return
    if a.long_rows:
        return long_rows(a)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="chatloom-bench-"))
    _, tok = load_model("small")
    proto = protocols.get("chatml", tok)
    model = build_model("small", len(tok), seed=0)
    fit_vocab(model, len(tok))
    from chatloom.train.export import export_model

    base = export_model(model, proto, work / "base")
    convs = make_conversations(a.convs + a.val)
    train_convs, val_convs = convs[:a.convs], convs[a.convs:]
    save(train_convs, work / "train.jsonl")
    stats = DataStats()
    examples = conversation_examples(train_convs, proto, a.seq_len, stats)
    pack(examples, a.seq_len, 0, stats)
    val_shard = pack(conversation_examples(val_convs, proto, a.seq_len), a.seq_len, 0)
    rendered = proto.render_batch(train_convs)
    mean_len = sum(len(r.ids) for r in rendered) / len(rendered)
    pad_batch = max(1, round(a.rows * a.seq_len / mean_len))  # about the same tokens per step as a packed batch
    results = {}
    only = a.only.split(",")
    for name in only:
        t = time.perf_counter()
        if name == "chatloom":
            r = run_chatloom(base, work / "train.jsonl", work / name, a, a.precision)
        elif name == "chatloom_compile":
            r = run_chatloom(base, work / "train.jsonl", work / name, a, a.precision, compile_=True)
        else:
            mode = name.removeprefix("trl_")
            r = run_trl(base, rendered, tok, work / name, a, mode, pad_batch if mode == "padding" else a.rows, a.precision)
        r["val_loss"] = round(val_loss(r.pop("model"), val_shard), 4)
        r["supervised_tok_s"] = round(r["supervised_tokens"] / r["train_seconds"], 1)
        r["wall_seconds"] = round(time.perf_counter() - t, 1)
        r["train_seconds"] = round(r["train_seconds"], 1)
        r["setup_seconds"] = round(r["setup_seconds"], 1)
        results[name] = r
        print(json.dumps({name: r}), file=sys.stderr, flush=True)
    trl = {k: v for k, v in results.items() if k.startswith("trl_")}
    fastest_trl = max(trl, key=lambda k: trl[k]["supervised_tok_s"]) if trl else None
    ratios = {}
    for k in [k for k in results if k.startswith("chatloom")]:
        for t in trl:
            ratios[f"{k}/{t}"] = round(results[k]["supervised_tok_s"] / trl[t]["supervised_tok_s"], 2)
    print(json.dumps({
        "machine": {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "note": "shared CPU (other jobs running): absolute numbers are noisy, compare ratios"},
        "setup": {"model": "chatloom small Llama (4 layers, hidden 256)", "params": sum(q.numel() for q in model.parameters()),
                  "tokenizer": "chatloom bundled BPE + chatml tokens", "train_conversations": a.convs,
                  "val_conversations": a.val, "steps": a.steps, "seq_len": a.seq_len, "packed_rows_per_step": a.rows,
                  "trl_padding_batch": pad_batch, "mean_conversation_tokens": round(mean_len, 1),
                  "chatloom_padding_waste": round(stats.padding_waste, 4), "precision": f"{a.precision} everywhere (fp32 weights)"},
        "results": results, "fastest_trl": fastest_trl, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
