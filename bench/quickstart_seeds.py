"""Do the quickstart's bars hold run to run? `chatloom quickstart --seed N` for several seeds, each with an empty cache.

Each seed runs in its own process with `CHATLOOM_CACHE` pointing at a fresh directory (so each pretrains its own base,
as a first-time user's run does), one after the other: run it on an otherwise idle machine, the budget is sized to
the machine at the start of every run. Prints one JSON object: per seed the wall time, the steps, every rate with its
95% interval, and whether each acceptance bar was met; then how many seeds met all bars.

    python bench/quickstart_seeds.py [--seeds 0 1 2] [--minutes 15] [--out runs/seeds] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_seed(seed: int, out: Path, minutes: float, tiny: bool) -> dict:
    from chatloom.evals import acceptance

    run_dir, cache = out / f"seed{seed}", out / f"cache{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "chatloom", "quickstart", "--seed", str(seed), "--minutes", str(minutes),
           "--out", str(run_dir)] + (["--tiny"] if tiny else [])
    start = time.perf_counter()
    with open(out / f"seed{seed}.log", "w", encoding="utf-8") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "CHATLOOM_CACHE": str(cache)})
    wall = time.perf_counter() - start
    base, sft = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    steps = [json.loads(p.read_text(encoding="utf-8")).get("steps")
             for p in (next(cache.glob("base-*/run_card.json"), None), run_dir / "sft" / "run_card.json") if p]
    rates = {k: {"rate": v["rate"], "n": v["n"], "ci95": v["ci95"]} for k, v in sft["rates"].items() if v["rate"] is not None}
    bars = acceptance(sft)
    return {"seed": seed, "wall_s": round(wall, 1), "steps": steps, "rates": rates, "bars": bars,
            "all_bars_met": all(ok is not False for ok in bars.values())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--out", type=Path, default=Path("runs/seeds"))
    p.add_argument("--tiny", action="store_true", help="the seconds-long tiny quickstart (a smoke test of this bench)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in a.seeds:
        runs.append(run_seed(seed, a.out, a.minutes, a.tiny))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"minutes": a.minutes, "tiny": a.tiny, "runs": runs,
                      "seeds_meeting_all_bars": sum(r["all_bars_met"] for r in runs), "seeds": len(runs)}, indent=1))


if __name__ == "__main__":
    main()
