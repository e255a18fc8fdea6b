"""Benchmark: building a mixture, chatloom `data mix` versus the same pipeline written with Hugging Face `datasets`.

Three generated sources (JSONL, mixed lengths, planted near-duplicates), the same steps on both sides: token counts
under the chatml protocol with chatloom's bundled tokenizer (the reference tokenizes the same rendered text with the
same tokenizer), a token-length filter, MinHash LSH near-duplicate removal (datasketch, same threshold and shingles),
a seeded shuffle, a train/validation split and Parquet output. Each side runs in its own process so peak RSS is its own.
Prints JSON with conversations/s, peak RSS and the ratio.

    python bench/mix.py [--n 200000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a model answer question kite wind data token loss train assistant user helpful careful simple clear "
         "explain why how what when number river mountain city music science history").split()


def generate(dirpath: Path, n: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for s in range(3):
        path = dirpath / f"source{s}.jsonl"
        with path.open("w") as f:
            for i in range(n // 3):
                turns = rng.choice([2, 2, 4, 6])
                msgs = []
                for t in range(turns):
                    k = rng.randint(4, 30) if t % 2 == 0 else rng.randint(10, 200)
                    msgs.append({"role": "user" if t % 2 == 0 else "assistant",
                                 "content": " ".join(rng.choice(WORDS) for _ in range(k)) + f" {s}-{i}"})
                f.write(json.dumps({"messages": msgs}) + "\n")
                if i % 50 == 0:  # a planted near-duplicate
                    msgs = [dict(m) for m in msgs]
                    msgs[-1]["content"] = msgs[-1]["content"].replace(" the ", " a ", 1)
                    f.write(json.dumps({"messages": msgs}) + "\n")
        paths.append(path)
    return paths


def run_chatloom(paths: list[str], out: str) -> None:
    from chatloom.data.mix import build_mixture

    recipe = Path(out) / "recipe.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(json.dumps({
        "seed": 0, "protocol": "chatml", "filters": {"max_tokens": 400},
        "dedupe": {"exact": False, "near": {"threshold": 0.8, "num_perm": 64, "shingle": 5}},
        "split": {"validation": 0.05}, "sources": [{"name": f"s{i}", "path": p} for i, p in enumerate(paths)]}))
    build_mixture(recipe, Path(out) / "mix", progress=False)


def run_datasets(paths: list[str], out: str) -> None:
    import datasets
    from datasketch import MinHash, MinHashLSH

    from chatloom.data.mix import normalise
    from chatloom.tokenizers import load_tokenizer

    tok = load_tokenizer(None).hf  # chatloom's bundled BPE
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    ds = datasets.load_dataset("json", data_files=paths, split="train")

    def count(batch):
        texts = ["".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) for msgs in batch["messages"]]
        return {"n_tokens": [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]],
                "text": ["\n".join(f"{m['role']}: {m['content']}" for m in msgs) for msgs in batch["messages"]]}

    ds = ds.map(count, batched=True, num_proc=2)
    ds = ds.filter(lambda b: [n <= 400 for n in b["n_tokens"]], batched=True, num_proc=2)
    lsh = MinHashLSH(threshold=0.8, num_perm=64)
    keep = []
    for i, text in enumerate(ds["text"]):
        words = normalise(text).split()
        mh = MinHash(num_perm=64)
        mh.update_batch([" ".join(words[j:j + 5]).encode() for j in range(max(1, len(words) - 4))])
        if lsh.query(mh):
            continue
        lsh.insert(str(i), mh)
        keep.append(i)
    ds = ds.select(keep).shuffle(seed=0)
    split = ds.train_test_split(test_size=0.05, seed=0)
    Path(out).mkdir(parents=True, exist_ok=True)
    split["train"].to_parquet(str(Path(out) / "train.parquet"))
    split["test"].to_parquet(str(Path(out) / "validation.parquet"))


def child(which: str, paths: list[str], out: str) -> None:
    t0 = time.perf_counter()
    (run_chatloom if which == "chatloom" else run_datasets)(paths, out)
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": round(max(rss_mb, children), 1)}))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        which, paths, out = args.child
        child(which, json.loads(paths), out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(p) for p in generate(Path(tmp), args.n)]
        rows = sum(1 for p in paths for _ in open(p))
        result = {"benchmark": "data mix", "conversations": rows}
        for which in ("chatloom", "datasets"):
            out = subprocess.run([sys.executable, __file__, "--child", which, json.dumps(paths), str(Path(tmp) / which)],
                                 capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            result[which] = {"conv_per_s": round(rows / m["seconds"], 1), "seconds": round(m["seconds"], 1),
                             "peak_rss_mb": m["peak_rss_mb"]}
        result["ratio"] = round(result["chatloom"]["conv_per_s"] / result["datasets"]["conv_per_s"], 2)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
