"""Benchmark: render (ids + loss mask) throughput, chatloom vs transformers' apply_chat_template.

Same tokenizer (GPT-2 tokenizer.json from tests/fixtures plus the template's control tokens), same template (TRL's
Qwen2.5 training template, whose {% generation %} markers transformers needs for `return_assistant_tokens_mask`), same
generated multi-turn conversations of mixed lengths. Ids are checked identical; masks are compared too (TRL's markers
also supervise the newline around each turn; chatloom supervises content + <|im_end|>). Prints JSON.

    python bench/protocol.py [--n 10000] [--fixtures tests/fixtures]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from chatloom import Conversation, Message, load_tokenizer, protocols

WORDS = ("the model answers in turns and stops when it is done ; a labeler writes the ideal reply , "
         "tokens masks loss training conversation assistant user system 2+2 = 4 ünïcødé 漢字 🤖 what why how").split()


def make_conversations(n: int, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = [Message("system", "You are Loom, a helpful assistant.")] if rng.random() < 0.5 else []
        for t in range(rng.choice([2, 2, 4, 4, 6, 8])):
            words = rng.randint(3, 40) if t % 2 == 0 else rng.randint(5, 160)
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            messages.append(Message("user" if t % 2 == 0 else "assistant", text[0].upper() + text[1:] + "."))
        out.append(Conversation(messages))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
    ap.add_argument("--reference-n", type=int, default=0, help="render only this many with transformers (0: all)")
    args = ap.parse_args(argv)
    fixtures = Path(args.fixtures)
    template = (fixtures / "chat_templates" / "trl" / "qwen2_5_training.jinja").read_text()
    tok = load_tokenizer(fixtures / "chat_templates" / "tokenizers" / "gpt2.tokenizer.json")
    proto = protocols.from_template(template, tok, eos_token="<|endoftext|>")
    hf = tok.hf
    convs = make_conversations(args.n)
    messages = [[m.to_dict() for m in c.messages] for c in convs]
    n_ref = args.reference_n or args.n

    t0 = time.perf_counter()
    ref = []
    for msgs in messages[:n_ref]:
        out = hf.apply_chat_template(msgs, chat_template=template, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True, eos_token="<|endoftext|>")
        ref.append((list(out["input_ids"]), list(out["assistant_masks"])))
    t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    proto.render_batch(convs[:64])  # one-time setup: builds the tokenizer's fast twin (like loading it)
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = []
    for i in range(0, len(convs), 512):
        ours.extend(proto.render_batch(convs[i:i + 512]))
    t_ours = time.perf_counter() - t0

    same_ids = all(r.ids == ids for r, (ids, _) in zip(ours, ref))
    inside = all(all(b or not a for a, b in zip(r.mask, m)) for r, (_, m) in zip(ours, ref))
    tokens = sum(len(r.ids) for r in ours)
    result = {
        "benchmark": "protocol.render (ids + mask)",
        "conversations": args.n, "tokens": tokens, "template": "trl/qwen2_5_training.jinja", "tokenizer": "gpt2 + control tokens",
        "fast_path": proto.skeleton is not None,
        "transformers_conv_per_s": round(n_ref / t_ref, 1),
        "chatloom_conv_per_s": round(args.n / t_ours, 1),
        "ratio": round((args.n / t_ours) / (n_ref / t_ref), 2),
        "chatloom_one_time_setup_s": round(t_setup, 3),
        "ids_identical": same_ids, "chatloom_mask_within_trl_mask": inside,
    }
    print(json.dumps(result))
    return 0 if same_ids else 1


if __name__ == "__main__":
    sys.exit(main())
