"""The imitation analysis: how much of what a fine-tuned model says is a copy of what its labelers wrote.

An assistant's answer is a statistical imitation of its training answers. This module makes that visible: it asks the
model prompts taken from its own training set (default 100, a seeded sample) and the held-out probes, and puts each
answer next to the *nearest training answer*:

- **similarity**: the Jaccard similarity of the two texts' sets of token 3-grams (w-shingling, Broder 1997); tokens are
  the words and the single symbols (punctuation, operators: "5*6 = -1" is not "5-6 = -1") of the NFKC, lower-cased
  text; a text of fewer than 3 tokens is one shingle. 1.0 = the same tokens in the same order (up to case and
  spacing); 0.0 = no three consecutive tokens in common.
- **nearest**: an exact match of the normalised text if there is one, else the best exact Jaccard among the candidates a
  MinHash LSH Forest (datasketch, 128 permutations) proposes (the 32 with the highest estimated similarity); with no
  shared shingle there is no nearest answer.
- **recitation**: similarity >= `THRESHOLD` (0.5: at least half of the two answers' 3-word phrases, counted over
  their union, are the same).
- **in training**: the prompt's last user turn equals a training user turn after whitespace and case normalisation.
- **phrase reuse**: the fraction of the answer's 3-grams that occur in *some* training answer, the "same vibe" even
  when no single training answer is copied.

Summary: the recitation rate for prompts seen in training and for the others (held-out), each with n and a 95% Wilson
interval, mean similarity and phrase reuse per group, and every example.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..conversation import Conversation, load
from .stats import rate_entry

SHINGLE = 3
THRESHOLD = 0.5
NUM_PERM = 128
CANDIDATES = 32
TRAIN_SAMPLE = 100
SIMILARITY = (f"Jaccard similarity of token {SHINGLE}-gram sets (tokens: words and single symbols of the NFKC, "
              "lower-cased text), nearest "
              f"training answer by exact match or among {CANDIDATES} MinHash LSH Forest candidates "
              f"({NUM_PERM} permutations)")


def normalise_prompt(text: str) -> str:
    """Whitespace runs to one space, case folded: how a prompt is compared with the training user turns."""
    return " ".join(text.split()).casefold()


TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Words and single symbols of the NFKC, lower-cased text (symbols count: an operator changes an equation)."""
    return TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def shingles(text: str, n: int = SHINGLE) -> frozenset[str]:
    words = tokens(text)
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def last_user_turn(conv: Conversation) -> str:
    return next((m.content for m in reversed(conv.messages) if m.role == "user"), "")


@dataclass
class Nearest:
    id: str | None
    text: str | None
    similarity: float


class TrainingIndex:
    """The training set's assistant answers (the supervised ones, deduplicated by normalised text, first conversation
    id kept) in a MinHash LSH Forest, its user turns (normalised) and every answer 3-gram (for phrase reuse)."""

    def __init__(self, convs: Iterable[Conversation], num_perm: int = NUM_PERM):
        from datasketch import MinHash, MinHashLSHForest

        self.user_turns: set[str] = set()
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.sets: list[frozenset] = []
        self.exact: dict[str, int] = {}
        self.all_shingles: set[str] = set()
        self.conversations = 0
        for conv in convs:
            self.conversations += 1
            for m in conv.messages:
                if m.role == "user":
                    self.user_turns.add(normalise_prompt(m.content))
                elif m.role == "assistant" and m.train and m.content.strip():
                    sh = shingles(m.content)
                    exact_key = self._exact_key(m.content)
                    if exact_key in self.exact or not sh:
                        continue
                    self.exact[exact_key] = len(self.ids)
                    self.ids.append(conv.id)
                    self.texts.append(m.content)
                    self.sets.append(sh)
                    self.all_shingles |= sh
        self.num_perm = num_perm
        template = MinHash(num_perm=num_perm, seed=1)
        self._perm, self._scheme = template.permutations, template.scheme  # drawn once, shared by every answer
        self.forest = MinHashLSHForest(num_perm=num_perm, l=32)  # 32 trees of 4: a 0.2-similar answer is missed w.p. 0.8**32
        for i, sh in enumerate(self.sets):
            self.forest.add(i, self._minhash(sh))
        self.forest.index()

    @staticmethod
    def _exact_key(text: str) -> str:
        return " ".join(tokens(text))

    def _minhash(self, sh: frozenset):
        from datasketch import MinHash

        mh = MinHash(num_perm=self.num_perm, seed=1, permutations=self._perm, scheme=self._scheme)
        mh.update_batch([s.encode("utf-8") for s in sh])
        return mh

    def __len__(self) -> int:
        return len(self.ids)

    def in_training(self, prompt: str) -> bool:
        return normalise_prompt(prompt) in self.user_turns

    def nearest(self, answer: str, candidates: int = CANDIDATES) -> Nearest:
        sh = shingles(answer)
        if not sh or not self.ids:
            return Nearest(None, None, 0.0)
        exact = self.exact.get(self._exact_key(answer))
        if exact is not None:
            return Nearest(self.ids[exact], self.texts[exact], jaccard(sh, self.sets[exact]))
        best, best_sim = None, 0.0
        for i in sorted(self.forest.query(self._minhash(sh), candidates)):
            sim = jaccard(sh, self.sets[i])
            if sim > best_sim:
                best, best_sim = i, sim
        if best is None:
            return Nearest(None, None, 0.0)
        return Nearest(self.ids[best], self.texts[best], best_sim)

    def reuse(self, answer: str) -> float:
        """The fraction of the answer's 3-grams that some training answer also has."""
        sh = shingles(answer)
        return len(sh & self.all_shingles) / len(sh) if sh else 0.0


def sample_training_prompts(convs: Sequence[Conversation], n: int = TRAIN_SAMPLE, seed: int = 0) -> list[Conversation]:
    """`n` training conversations (seeded; all if fewer) that end with an assistant turn, each without that turn."""
    from .evaluate import without_last_reply

    usable = [c for c in convs if c.messages and c.messages[-1].role == "assistant"
              and any(m.role == "user" for m in c.messages)]
    chosen = random.Random(seed).sample(usable, min(n, len(usable)))
    return [without_last_reply(c) for c in chosen]


def example(index: TrainingIndex, prompt: Conversation, answer: str, source: str) -> dict:
    user = last_user_turn(prompt)
    near = index.nearest(answer)
    return {"prompt": user, "answer": answer, "prompt_in_training": index.in_training(user),
            "nearest_train_id": near.id, "nearest_train_answer": near.text, "similarity": round(near.similarity, 4),
            "phrase_reuse": round(index.reuse(answer), 4), "source": source,
            "context_turns": sum(1 for m in prompt.messages if m.role != "system") - 1}


def summarize(examples: list[dict], threshold: float = THRESHOLD, **info) -> dict:
    groups = {"in_training": [e for e in examples if e["prompt_in_training"]],
              "held_out": [e for e in examples if not e["prompt_in_training"]]}
    for e in examples:
        e["recited"] = e["similarity"] >= threshold
    rates = {g: rate_entry([e["recited"] for e in es]) for g, es in groups.items()}

    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None

    return {"recitation_in_training": rates["in_training"]["rate"], "recitation_held_out": rates["held_out"]["rate"],
            "threshold": threshold, "similarity_measure": SIMILARITY, **info, "rates": rates,
            "mean_similarity": {g: mean(e["similarity"] for e in es) for g, es in groups.items()},
            "phrase_reuse": {g: mean(e["phrase_reuse"] for e in es) for g, es in groups.items()},
            "examples": examples}


def analyse(engine, train: str | Path | Sequence[Conversation], heldout: Sequence[tuple[Conversation, str]] = (), *,
            n_train: int = TRAIN_SAMPLE, seed: int = 0, threshold: float = THRESHOLD, max_tokens: int = 64,
            progress: bool = True, index: TrainingIndex | None = None) -> dict:
    """The imitation analysis of one model (a ready `engine`): its greedy answers to `n_train` prompts sampled from
    `train` and the given held-out (prompt, answer) pairs (already answered by the evaluation), each against the
    nearest training answer. Returns the summary dict (the `"imitation"` of `chatloom eval --json`)."""
    from .evaluate import progress_bar
    from .generate import generate

    convs = list(load(train)) if isinstance(train, str | Path) else list(train)
    index = index or TrainingIndex(convs)
    prompts = sample_training_prompts(convs, n_train, seed)
    with progress_bar(progress) as bar:
        task = bar.add_task("imitation: answering training prompts", total=len(prompts), rate="")
        replies = generate(engine, prompts, max_tokens=max_tokens, on_batch=lambda k: bar.advance(task, k))
    examples = [example(index, p, answer, "held-out probes") for p, answer in heldout]
    examples += [example(index, p, r.content, "training sample") for p, r in zip(prompts, replies)]
    return summarize(examples, threshold, train=str(train) if isinstance(train, str | Path) else "(conversations)",
                     train_conversations=index.conversations, train_answers=len(index), train_sample=len(prompts),
                     seed=seed)


def heldout_pairs(report: dict) -> list[tuple[Conversation, str]]:
    """(prompt, answer) for every sample of an evaluation report: the held-out side of the analysis."""
    from ..conversation import Message

    out = []
    for s in report["samples"]:
        messages = [Message(m["role"], m["content"]) for m in s["prompt"]]
        out.append((Conversation(messages), s["reply"]))
    return out
