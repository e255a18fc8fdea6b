"""Character-level Levenshtein distance between an LLM draft and the text a labeler submitted.

Myers' bit-parallel algorithm (Hyyrö's formulation for edit distance) on Python integers: one pass over the second string
with word-sized bit operations, so a 10k-character reply is measured in milliseconds instead of a 10^8-cell table.
"""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Insertions, deletions and substitutions of single characters (code points) that turn `a` into `b`."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    m = len(b)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & mask) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def normalized(a: str, b: str, distance: int | None = None) -> float:
    """Distance divided by the longer length: 0.0 = kept unchanged, 1.0 = rewritten entirely."""
    longest = max(len(a), len(b))
    if longest == 0:
        return 0.0
    return (levenshtein(a, b) if distance is None else distance) / longest
