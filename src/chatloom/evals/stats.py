"""How much a rate measured on n probes can be trusted: Wilson score intervals and the paired exact McNemar test.

A bar like "refusal 87.5%" means little without its n: on 24 probes one probe is 4 points. Every rate chatloom reports
carries `n` and a 95% Wilson score interval (`ci95`); two models answering the *same* probes are compared with McNemar's
exact test on the probes where they disagree (the discordant pairs), which is far more sensitive than comparing two
intervals, because the probes both pass or both fail carry no information about the difference.

Pure functions on counts (no numpy, no scipy): `wilson`, `mcnemar_exact`, `rate_entry`, `paired`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: the 0.975 quantile of the standard normal distribution (two-sided 95%)
Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for k successes in n trials (Wilson 1927; Newcombe 1998, method 3), or None for n = 0.

    center = (k + z²/2) / (n + z²),  half = z·sqrt(k(n-k)/n + z²/4) / (n + z²)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    z2 = z * z
    center = (k + z2 / 2) / (n + z2)
    half = z * math.sqrt(k * (n - k) / n + z2 / 4) / (n + z2)
    lo, hi = max(0.0, center - half), min(1.0, center + half)
    if k == 0:  # exact ends (the formula gives them up to rounding)
        lo = 0.0
    if k == n:
        hi = 1.0
    return lo, hi


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (b: only the first model passed, c: only the
    second): under "no difference" each discordant pair goes either way with probability 1/2, so
    p = min(1, 2 · P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); p = 1 when there is no discordant pair."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integers until this one division


def rate_entry(values: Sequence[bool]) -> dict:
    """{"rate", "n", "k", "ci95"} for a list of outcomes (k: how many are true); rate and ci95 are None when nothing
    was measured."""
    n, k = len(values), sum(bool(v) for v in values)
    ci = wilson(k, n)
    return {"rate": k / n if n else None, "n": n, "k": k, "ci95": list(ci) if ci else None}


def paired(first: dict[str, bool], second: dict[str, bool], alpha: float = 0.05) -> dict:
    """McNemar's exact test for two models' outcomes on the same probes (keyed by probe id; only shared keys count).

    Returns the shared n, both rates, the difference (second - first), the discordant counts (b: first passed and
    second failed, c: the other way round), the p-value and whether the difference is larger than the noise
    (p < alpha)."""
    keys = [k for k in first if k in second]
    n = len(keys)
    b = sum(1 for k in keys if first[k] and not second[k])
    c = sum(1 for k in keys if second[k] and not first[k])
    r1 = sum(1 for k in keys if first[k]) / n if n else None
    r2 = sum(1 for k in keys if second[k]) / n if n else None
    p = mcnemar_exact(b, c)
    return {"n": n, "first": r1, "second": r2, "difference": None if n == 0 else r2 - r1,
            "only_first": b, "only_second": c, "p_value": p, "significant": n > 0 and p < alpha,
            "test": "McNemar exact (two-sided binomial on discordant pairs)"}
