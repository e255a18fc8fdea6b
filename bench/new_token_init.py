"""How a new end-of-turn row should start: the mean of the old rows, or a copy of the end-of-text row (what
`train.models.end_of_turn_like` makes `fit_vocab` do for a trained model).

A base model without chatml's tokens (Gemma 3 270M base: its 262k vocabulary has no `<|im_end|>`) gets the same short
SFT twice, `--steps` steps of the quickstart's conversations (rows of 8 x 256, lr 1e-4, seed 0), once per start. Then,
teacher-forced on held-out conversations of the quickstart, at every position where a reply ends: the probability the
model gives `<|im_end|>`, and how often it is the most likely token (what greedy decoding needs to end the turn). Prints
JSON.

    python bench/new_token_init.py [--gguf gemma-3-270m-q4_k_m.gguf] [--steps 15] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from chatloom import load
from chatloom.quickstart.dataset import HELDOUT_PATH, TRAIN_PATH
from chatloom.train import TrainConfig, loop


def reply_ends(model, proto, convs) -> list[tuple[float, bool]]:
    """P(end-of-turn) at each supervised end-of-turn position of `convs` (teacher forcing) and whether it is the argmax."""
    eot, out = proto.end_of_turn_id, []
    with torch.no_grad():
        for c in convs:
            r = proto.render(c)
            logits = model(torch.tensor([r.ids])).logits[0].float()
            for i in range(1, len(r.ids)):
                if r.ids[i] == eot and r.mask[i]:
                    p = logits[i - 1].softmax(-1)
                    out.append((p[eot].item(), p.argmax().item() == eot))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default="/tmp/gemma/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--heldout", type=int, default=60, help="held-out conversations scored")
    ap.add_argument("--work", default="runs/new_token_init")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    held = [c for c in load(HELDOUT_PATH) if any(m.role == "assistant" for m in c.messages)][:a.heldout]
    copy_rows = loop.end_of_turn_like
    result = {"model": Path(a.gguf).name, "steps": a.steps}
    for start in ("mean", "copy"):
        loop.end_of_turn_like = copy_rows if start == "copy" else (lambda protocol, model: {})
        t = time.time()
        run = loop.Run(TrainConfig(out=f"{a.work}/{start}", mode="sft", model=a.gguf, data=[str(TRAIN_PATH)],
                                   protocol="chatml", max_steps=a.steps, seq_len=256, batch_size=8, lr=1e-4, seed=0,
                                   warmup_steps=max(1, a.steps // 20), progress=False))
        run.fit()
        ends = reply_ends(run.raw_model.eval(), run.protocol, held)
        probs = sorted(p for p, _ in ends)
        result[start] = {"seconds": round(time.time() - t), "reply_ends": len(ends),
                         "mean_p_eot": round(sum(probs) / len(probs), 4), "median_p_eot": round(probs[len(probs) // 2], 4),
                         "eot_is_argmax": sum(top for _, top in ends)}
        del run
    loop.end_of_turn_like = copy_rows
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
