"""Does SFT keep what the base knew? Facts a base model completes as plain text, before and after.

Twenty one-line world facts, none of them asked or answered in the quickstart's conversations
(`chatloom.quickstart.seeds`), each a text prefix and the words that complete it right ("The chemical symbol for gold
is" -> "Au"). Each model continues every prefix greedily (8 new tokens, raw text, no chat protocol), and a completion
is right when it contains one of the words (case-insensitive). Knowledge kept = the facts the SFT model still completes
among those the base completes: only what the base knew can be forgotten. Prints JSON.

    python bench/knowledge.py --base runs/quickstart/base --model runs/quickstart/sft [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

FACTS = [
    ("The chemical symbol for gold is", ["Au"]), ("The Earth orbits the", ["Sun"]),
    ("The tallest mountain in the world is Mount", ["Everest"]), ("Romeo and Juliet was written by William", ["Shakespeare"]),
    ("The first president of the United States was George", ["Washington"]), ("The capital of Spain is", ["Madrid"]),
    ("The capital of Canada is", ["Ottawa"]), ("The Great Wall is in", ["China"]),
    ("Plants take in carbon dioxide and give off", ["oxygen"]), ("The largest ocean on Earth is the", ["Pacific"]),
    ("The Mona Lisa was painted by Leonardo da", ["Vinci"]), ("Water freezes at zero degrees", ["Celsius", "C"]),
    ("The currency of Japan is the", ["yen"]), ("Paris is the capital of", ["France"]),
    ("The closest star to the Earth is the", ["Sun"]), ("The chemical formula of table salt is", ["NaCl"]),
    ("A triangle has three", ["sides", "angles", "corners"]), ("The Nile is a river in", ["Africa", "Egypt"]),
    ("Albert Einstein developed the theory of", ["relativity"]), ("The freezing point of water in Fahrenheit is", ["32"]),
]


def completions(model_dir: str | Path, max_new_tokens: int = 8) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for prefix, _ in FACTS:
        ids = tok(prefix, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.eos_token_id or 0)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def right(text: str, words: list[str]) -> bool:
    return any(w.lower() in text.lower() for w in words)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    base, tuned = completions(a.base), completions(a.model)
    known = [i for i, (_, words) in enumerate(FACTS) if right(base[i], words)]
    kept = [i for i in known if right(tuned[i], FACTS[i][1])]
    result = {"base": a.base, "model": a.model, "facts": len(FACTS), "base_right": len(known),
              "model_right": sum(right(t, w) for t, (_, w) in zip(tuned, FACTS, strict=True)),
              "kept": len(kept), "kept_of": len(known),
              "forgotten": [{"prefix": FACTS[i][0], "base": base[i], "model": tuned[i]} for i in known if i not in kept],
              "completions": [{"prefix": f, "base": b, "model": t} for (f, _), b, t in zip(FACTS, base, tuned, strict=True)]}
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
