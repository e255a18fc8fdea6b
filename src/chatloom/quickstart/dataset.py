"""The embedded conversation set: the hand-written seeds in `seeds.py`, expanded by templates into train and held-out.

`build()` is deterministic (a seeded `random.Random`), so `python -m chatloom.quickstart.dataset` rewrites the packaged
files `data/train.jsonl` and `data/heldout.jsonl` byte for byte. Every record carries `meta.tags` (its categories:
identity, arithmetic, refusal, benign, helpful, multiturn); held-out records also carry `meta.probe`, what `chatloom.evals`
checks in the model's reply to the last turn: {"kind": "identity" | "arithmetic" | "refusal" | "benign" | "helpful",
"expect": ...}.

Held-out is disjoint from training: no held-out user turn occurs in training, and its values differ (other harmful
and benign targets, other facts and words; arithmetic questions whose operand order never appears in training — for
+ and * only the commuted question is trained, held-out subtractions are never trained at all). It is large enough to
decide: each bar (identity, arithmetic, refusal, false refusal) counts at least 60 probes on at least 30 distinct
targets (`meta.probe.target` on held-out records), so one target moves a bar by about 3 points, not 8.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

from ..conversation import Conversation, Message, save
from . import seeds
from .corpus import OPERATORS, fact

DATA_DIR = Path(__file__).parent / "data"
TRAIN_PATH = DATA_DIR / "train.jsonl"
HELDOUT_PATH = DATA_DIR / "heldout.jsonl"
META = {"source": "chatloom:quickstart", "license": "Apache-2.0", "lang": "en"}

OPS = OPERATORS  # the same facts the base's drill sheets teach
TRAIN_ARITH_FRAMES = ["What is {e}?", "what's {e}", "Compute {e}.", "{e}=?", "What does {e} equal?", "Calculate {e}",
                      "{e}", "Quick: {e}?", "Can you tell me what {e} is?", "Please compute {e}.", "Evaluate {e}.",
                      "Find {e}.", "Tell me {e}.", "{e} is what?", "Give me the answer to {e}.", "Hey, what's {e}?",
                      "Figure out {e}.", "Answer this: {e}", "What do you get for {e}?", "Could you do {e}?",
                      "Please calculate {e}", "I need {e}.", "Do {e} for me.", "Result of {e}?"]
HELDOUT_ARITH_FRAMES = ["How much is {e}?", "Solve {e}.", "Please work out {e}."]
TRAIN_FOLLOWUPS = ["What if it was {new} instead of {old}?", "And with {new} instead of {old}?", "Now try {new} instead of {old}.",
                   "What about {new} instead?", "Same numbers with {new}?", "Now use {new} instead of {old}.",
                   "And if I swap {old} for {new}?", "Try it with {new}."]
HELDOUT_FOLLOWUPS = ["And if it were {new} rather than {old}?", "How about using {new} in place of {old}?"]


def equation(a: int, op: str, b: int) -> str:
    return f"{a}{op}{b}"


def arithmetic_answer(a: int, op: str, b: int) -> str:
    return fact(a, op, b)  # the answer is written exactly as the drill sheets write the fact


def followup_answer(a: int, old: str, new: str, b: int) -> str:
    value, before = OPS[new](a, b), OPS[old](a, b)
    if value == before:
        return f"{arithmetic_answer(a, new, b)}, same as {equation(a, old, b)}!"
    return f"{arithmetic_answer(a, new, b)}, while {arithmetic_answer(a, old, b)}."


def heldout_triples(rng: random.Random) -> set[tuple[int, str, int]]:
    """20 per operator. For + and * the operands satisfy a > b and the commuted b op a stays in training."""
    held = set()
    for op in ("+", "*"):
        pairs = [(a, b) for a in range(10) for b in range(10) if a > b]
        held |= {(a, op, b) for a, b in rng.sample(pairs, 20)}
    pairs = [(a, b) for a in range(10) for b in range(10) if (a, b) != (2, 2)]
    held |= {(a, "-", b) for a, b in rng.sample(pairs, 20)}
    return held


class Builder:
    """Collects conversations of one split; `system` prompts are sprinkled in at a fixed rate."""

    def __init__(self, rng: random.Random, heldout: bool):
        self.rng, self.heldout, self.convs = rng, heldout, []

    def add(self, turns: list[tuple[str, str]], tags: Iterable[str], probe: dict | None = None):
        messages = []
        if self.rng.random() < 0.3:
            messages.append(Message("system", self.rng.choice(seeds.SYSTEM_PROMPTS)))
        for user, assistant in turns:
            messages += [Message("user", user), Message("assistant", assistant)]
        meta = dict(META, tags=sorted(set(tags)), split="heldout" if self.heldout else "train")
        if probe is not None:
            meta["probe"] = probe
        self.convs.append(Conversation(messages, meta=meta))


def spaced(rng: random.Random, a: int, op: str, b: int) -> str:
    return f"{a} {op} {b}" if rng.random() < 0.3 else equation(a, op, b)


def train_harmful(rng: random.Random, victims_per_act: int = 6) -> list[str]:
    """The training split's harmful requests: the hand-written ones plus each harmful act against a few victims."""
    combos = [act.format(p=v) for act in seeds.HARM_ACTS for v in rng.sample(seeds.TRAIN_VICTIMS, victims_per_act)]
    return list(dict.fromkeys(seeds.TRAIN_HARMFUL + combos))


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def vocabulary(texts: Iterable[str]) -> set[str]:
    return set().union(*map(words, texts))


def near(word: str, others: set[str]) -> bool:
    """`word` is one of `others`, or (both 4+ letters) part of one or contains one: "plane" and "airplane"."""
    return word in others or len(word) >= 4 and any(len(o) >= 4 and (word in o or o in word) for o in others)


def held_out_apart(targets: list[str], named: set[str], held_out: list[str]) -> list[str]:
    """The `targets` with no word near one that only the `held_out` targets use (words in `named` are shared anyway),
    and none naming a held-out victim."""
    distinctive = vocabulary(held_out) - named
    victims = vocabulary(seeds.HELDOUT_VICTIMS) - {"my", "a"}
    return [t for t in targets if not words(t) & victims and not any(near(w, distinctive) for w in words(t) - named)]


def wider_harmful() -> list[str]:
    """The wider harms SFT trains on: none uses a word near one only the held-out unnamed harms use ("plane" and
    "airplane"), so "hijack an airplane" stays a request in words SFT never refused; none names a held-out victim."""
    return held_out_apart(seeds.WIDER_HARMFUL, vocabulary(seeds.TRAIN_HARMFUL), seeds.HELDOUT_UNNAMED_HARMS)


def wider_lookalikes() -> list[tuple[str, str]]:
    """The wider look-alikes SFT trains on, apart from the held-out look-alikes as `wider_harmful` is from the harms
    ("lawnmower", "kiln"; "bathroom" keeps "room" out)."""
    named = vocabulary(t for t, _ in seeds.TRAIN_BENIGN + seeds.BENIGN_ACTS)
    keep = set(held_out_apart([t for t, _ in seeds.WIDER_LOOKALIKES], named, [t for t, _ in seeds.HELDOUT_BENIGN]))
    return [(t, a) for t, a in seeds.WIDER_LOOKALIKES if t in keep]


def benign_for_people(rng: random.Random, people_per_act: int = 4) -> list[tuple[str, str]]:
    """Training look-alikes that name a person: each harmless act for a few of the training victims."""
    return [(act.format(p=v), answer) for act, answer in seeds.BENIGN_ACTS
            for v in rng.sample(seeds.TRAIN_VICTIMS, people_per_act)]


def build_split(heldout: bool, seed: int = 0) -> list[Conversation]:
    rng = random.Random(f"{seed}:{'heldout' if heldout else 'train'}")
    held_triples = heldout_triples(random.Random(seed))
    b = Builder(rng, heldout)
    pick = (lambda train, held: held) if heldout else (lambda train, held: train)

    def probe(kind: str, target: str, **more) -> dict:
        """meta.probe; held-out records also name their target (the question or request the probe is about), so
        the evaluation can count distinct targets. Training records stay as they were."""
        return {"kind": kind, **more, **({"target": target} if heldout else {})}

    # identity
    questions = pick(seeds.TRAIN_IDENTITY_QUESTIONS, seeds.HELDOUT_IDENTITY_QUESTIONS)
    for q in questions * (1 if heldout else 8):
        b.add([(q, rng.choice(seeds.IDENTITY_ANSWERS))], ["identity"], probe("identity", q))

    # arithmetic, single turn and with a follow-up that changes the operator
    all_triples = [(x, op, y) for op in OPS for x in range(10) for y in range(10)]
    triples = sorted(held_triples) if heldout else [t for t in all_triples if t not in held_triples]
    frames = pick(TRAIN_ARITH_FRAMES, HELDOUT_ARITH_FRAMES)
    for x, op, y in triples * (1 if heldout else 3):
        q = rng.choice(frames).format(e=spaced(rng, x, op, y))
        b.add([(q, arithmetic_answer(x, op, y))], ["arithmetic"], {"kind": "arithmetic", "expect": arithmetic_answer(x, op, y)})
    followups = pick(TRAIN_FOLLOWUPS, HELDOUT_FOLLOWUPS)
    n_followups = 40 if heldout else 1400
    made = 0
    while made < n_followups:
        x, y = rng.randrange(10), rng.randrange(10)
        old, new = rng.sample(list(OPS), 2)
        first, second = (x, old, y), (x, new, y)
        if heldout != (second in held_triples) or (not heldout and first in held_triples):
            continue
        q1 = rng.choice(frames).format(e=spaced(rng, x, old, y))
        q2 = rng.choice(followups).format(new=new, old=old)
        b.add([(q1, arithmetic_answer(*first)), (q2, followup_answer(x, old, new, y))], ["arithmetic", "multiturn"],
              {"kind": "arithmetic", "expect": arithmetic_answer(*second)})
        made += 1
    if not heldout:  # the seed example itself, a few times
        for _ in range(10):
            b.add([("What is 2+2?", "2+2 = 4"), ("What if it was * instead of +?", "2*2 = 4, same as 2+2!")],
                  ["arithmetic", "multiturn"], {"kind": "arithmetic", "expect": "2*2 = 4"})

    # refusals and their benign look-alikes
    harm_frames = pick(seeds.TRAIN_HARM_FRAMES, seeds.HELDOUT_HARM_FRAMES)
    harmful = seeds.HELDOUT_HARMFUL if heldout else train_harmful(rng)  # held-out draws must not hang on training lists
    written = set(seeds.TRAIN_HARMFUL)
    for target in harmful:  # the hand-written requests in six frames, the act x victim combinations in four
        for frame in rng.sample(harm_frames, 2 if heldout else 6 if target in written else 4):
            b.add([(frame.format(x=target), rng.choice(seeds.REFUSAL_ANSWERS))], ["refusal"], probe("refusal", target))
    wider = random.Random(f"{seed}:wider")  # apart, so the draws above and below stay as they were
    for target in [] if heldout else wider_harmful():
        for frame in wider.sample(harm_frames, 4):
            b.add([(frame.format(x=target), wider.choice(seeds.REFUSAL_ANSWERS))], ["refusal"], {"kind": "refusal"})
    benign_frames = pick(seeds.TRAIN_BENIGN_FRAMES, seeds.HELDOUT_BENIGN_FRAMES)
    openings = random.Random(f"{seed}:openings:{'heldout' if heldout else 'train'}")  # apart: the draws above stay

    def comply(answer: str, rng: random.Random = openings) -> str:
        return rng.choice(seeds.COMPLY_OPENINGS) + answer

    for target, answer in pick(seeds.TRAIN_BENIGN, seeds.HELDOUT_BENIGN):
        for frame in rng.sample(benign_frames, 2 if heldout else 8):
            b.add([(frame.format(x=target), comply(answer))], ["benign"], probe("benign", target))
    for target, answer in ([] if heldout else benign_for_people(rng)):
        for frame in rng.sample(benign_frames, 3):
            b.add([(frame.format(x=target), comply(answer))], ["benign"], {"kind": "benign"})
    for target, answer in [] if heldout else wider_lookalikes():
        for frame in wider.sample(benign_frames, 4):
            b.add([(frame.format(x=target), comply(answer, wider))], ["benign"], {"kind": "benign"})

    # short helpful answers
    for phrasings, answer in pick(seeds.TRAIN_FACTS, seeds.HELDOUT_FACTS):
        for q in phrasings * (1 if heldout else 4):
            b.add([(q, answer)], ["helpful"], {"kind": "helpful", "expect": answer})
    for w, o in pick(seeds.OPPOSITES, seeds.HELDOUT_OPPOSITES):
        for x, y in ((w, o), (o, w)):
            b.add([(f"What is the opposite of {x}?", f"The opposite of {x} is {y}.")], ["helpful"],
                  {"kind": "helpful", "expect": f"The opposite of {x} is {y}."})
    for w in pick(seeds.WORDS, seeds.HELDOUT_WORDS):
        b.add([(f"Spell '{w}' backwards.", f"'{w}' backwards is '{w[::-1]}'.")], ["helpful"],
              {"kind": "helpful", "expect": f"'{w}' backwards is '{w[::-1]}'."})
        b.add([(f"Write '{w}' in capital letters.", w.upper())], ["helpful"], {"kind": "helpful", "expect": w.upper()})
        b.add([(f"How many letters are in '{w}'?", f"'{w}' has {len(w)} letters.")], ["helpful"],
              {"kind": "helpful", "expect": f"'{w}' has {len(w)} letters."})
    numbers = [n for n in range(100) if (n % 10 == 7) == heldout]
    for n in numbers:
        b.add([(f"What number comes after {n}?", f"{n + 1} comes after {n}.")], ["helpful"],
              {"kind": "helpful", "expect": f"{n + 1} comes after {n}."})

    # multi-turn: greetings, thanks, identity chains, a refusal followed by a fine request
    greetings, thanks = pick(seeds.GREETINGS, seeds.HELDOUT_GREETINGS), pick(seeds.THANKS, seeds.HELDOUT_THANKS)
    facts = pick(seeds.TRAIN_FACTS, seeds.HELDOUT_FACTS)
    benign = pick(seeds.TRAIN_BENIGN, seeds.HELDOUT_BENIGN)
    for i in range(30 if heldout else 150):
        greet = (rng.choice(greetings), rng.choice(seeds.GREETING_ANSWERS))
        q = questions[-1 - i % len(questions)] if heldout else rng.choice(questions)  # held-out: spread over targets
        b.add([greet, (q, rng.choice(seeds.IDENTITY_ANSWERS))], ["identity", "multiturn"], probe("identity", q))
        phrasings, answer = rng.choice(facts)
        b.add([(rng.choice(phrasings), answer), (rng.choice(thanks), rng.choice(seeds.THANKS_ANSWERS))],
              ["helpful", "multiturn"], {"kind": "helpful", "expect": None})
        target, answer = benign[-1 - i % len(benign)] if heldout else rng.choice(benign)
        b.add([(rng.choice(harm_frames).format(x=rng.choice(harmful)), rng.choice(seeds.REFUSAL_ANSWERS)),
               (rng.choice(benign_frames).format(x=target), comply(answer))], ["benign", "refusal", "multiturn"],
              probe("benign", target))
        x, y = rng.randrange(10), rng.randrange(10)
        if ((x, "+", y) in held_triples) == heldout:
            b.add([(rng.choice(questions), rng.choice(seeds.IDENTITY_ANSWERS)), (rng.choice(frames).format(e=f"{x}+{y}"),
                   arithmetic_answer(x, "+", y))], ["identity", "arithmetic", "multiturn"],
                  {"kind": "arithmetic", "expect": arithmetic_answer(x, "+", y)})
    rng.shuffle(b.convs)
    return dedupe(b.convs)


def dedupe(convs: list[Conversation]) -> list[Conversation]:
    seen, out = set(), []
    for c in convs:
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return out


def build(seed: int = 0) -> tuple[list[Conversation], list[Conversation]]:
    """(train, heldout); held-out records whose user turns occur in training are dropped here, never written."""
    train = build_split(False, seed)
    train_users = {m.content for c in train for m in c.messages if m.role == "user"}
    heldout = [c for c in build_split(True, seed)
               if not any(m.role == "user" and m.content in train_users for m in c.messages)]
    return train, heldout


def write(out_dir: str | Path = DATA_DIR, seed: int = 0) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, heldout = build(seed)
    save(train, out_dir / "train.jsonl")
    save(heldout, out_dir / "heldout.jsonl")
    return out_dir / "train.jsonl", out_dir / "heldout.jsonl"


if __name__ == "__main__":
    for path in write():
        print(path)
