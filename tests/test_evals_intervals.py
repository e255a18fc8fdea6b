"""Intervals and paired tests (`chatloom.evals.stats`) against published values and first principles, and their place in
every rate of an evaluation report, the terminal table, the HTML page and `chatloom eval --compare`."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatloom.evals import stats


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    # R: prop.test(8, 10, correct = FALSE)$conf.int = 0.4901625 0.9433178; 20/20 is the mirror image of 0/20
    (8, 10, 0.4902, 0.9433), (20, 20, 0.8389, 1.0),
])
def test_wilson_matches_published_values(k, n, lo, hi):
    got = stats.wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_edges_and_errors():
    assert stats.wilson(0, 0) is None
    assert stats.wilson(0, 5)[0] == 0.0 and stats.wilson(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        stats.wilson(3, 2)
    with pytest.raises(ValueError):
        stats.wilson(-1, 2)


@given(st.integers(1, 2000), st.data())
def test_wilson_contains_the_estimate_and_mirrors(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = stats.wilson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    lo2, hi2 = stats.wilson(n - k, n)  # successes and failures swap: the interval mirrors around 1/2
    assert lo2 == pytest.approx(1 - hi, abs=1e-12) and hi2 == pytest.approx(1 - lo, abs=1e-12)


@pytest.mark.parametrize(("p", "n"), [(0.1, 60), (0.5, 60), (0.9, 60), (0.3, 200)])
def test_wilson_covers_about_95_percent(p, n):
    """Its exact coverage, summed over the binomial distribution (first principles, no simulation): close to 95%
    (Wilson's coverage oscillates around the nominal level; Brown, Cai & DasGupta 2001 show it within a few points)."""
    coverage = 0.0
    for k in range(n + 1):
        lo, hi = stats.wilson(k, n)
        if lo <= p <= hi:
            coverage += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
    assert 0.92 <= coverage <= 0.98, coverage


@pytest.mark.parametrize(("b", "c", "p"), [
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91: b=1, c=7, exact conditional McNemar p = 0.070;
    # R: binom.test(1, 8)$p.value = 0.0703125
    (1, 7, 0.0703125),
    # R: binom.test(0, 6)$p.value = 0.03125; binom.test(2, 12)$p.value = 0.03857422; binom.test(5, 10)$p.value = 1
    (0, 6, 0.03125), (2, 10, 0.03857421875), (5, 5, 1.0), (0, 0, 1.0),
    # every discordant pair one way: p = 2 / 2^n
    (0, 20, 2 / 2 ** 20),
])
def test_mcnemar_exact_matches_published_values(b, c, p):
    assert stats.mcnemar_exact(b, c) == pytest.approx(p, rel=1e-9)
    assert stats.mcnemar_exact(c, b) == stats.mcnemar_exact(b, c)


def test_mcnemar_against_scipy_binomtest():
    """An independent implementation: scipy's exact binomial test."""
    from scipy import stats as scipy_stats  # installed with datasketch (a dependency)
    for b in range(0, 25):
        for c in range(0, 25):
            if b + c:
                assert stats.mcnemar_exact(b, c) == pytest.approx(scipy_stats.binomtest(b, b + c).pvalue, rel=1e-9)


@settings(max_examples=50)
@given(st.dictionaries(st.text(min_size=1, max_size=4), st.tuples(st.booleans(), st.booleans()), max_size=60))
def test_paired_counts_discordant_pairs_only(outcomes):
    first = {k: a for k, (a, _) in outcomes.items()}
    second = {k: b for k, (_, b) in outcomes.items()}
    out = stats.paired(first, second)
    b = sum(a and not s for a, s in outcomes.values())
    c = sum(s and not a for a, s in outcomes.values())
    assert (out["only_first"], out["only_second"], out["n"]) == (b, c, len(outcomes))
    if outcomes:
        assert out["difference"] == pytest.approx((c - b) / len(outcomes))
    # adding pairs where both agree changes neither the discordant counts nor the p-value
    more = stats.paired({**first, "same-1": True, "same-2": False}, {**second, "same-1": True, "same-2": False})
    assert more["p_value"] == out["p_value"]
    assert out["significant"] == (out["p_value"] < 0.05 and bool(outcomes))


def test_rate_entry():
    assert stats.rate_entry([]) == {"rate": None, "n": 0, "k": 0, "ci95": None}
    e = stats.rate_entry([True] * 8 + [False] * 2)
    assert e["rate"] == 0.8 and e["n"] == 10 and e["k"] == 8 and e["ci95"] == pytest.approx([0.4902, 0.9433], abs=5e-5)


# ---------------------------------------------------------------- the intervals in reports (no model needed)

def sample(i, kind, passed, ok=True):
    return {"id": f"p{i}", "kind": kind, "prompt": [{"role": "user", "content": f"q{i}"}], "expect": "", "reply": "r",
            "finish_reason": "stop", "completion_tokens": 1, "stopped": ok, "leaked": False, "ok": ok, "passed": passed,
            "checks": {} if passed is None else {kind: passed}}


def report(outcomes: dict[str, list[bool]], label: str) -> dict:
    from chatloom.evals.evaluate import summarize

    samples, i = [], 0
    for kind, values in outcomes.items():
        for v in values:
            samples.append(sample(i, kind, v))
            i += 1
    return summarize(samples, {"loss": 1.0, "ppl": math.e, "tokens": 10}, label=label, model=label, data="x")


def objects_with(obj, keys):
    if isinstance(obj, dict):
        if keys <= set(obj):
            yield obj
        for v in obj.values():
            yield from objects_with(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            yield from objects_with(v, keys)


def test_every_rate_object_in_a_report_has_n_and_ci95():
    r = report({"identity": [True] * 9 + [False], "refusal": [True] * 20, "benign": [True] * 18 + [False] * 2,
                "helpful": [True, False]}, "m")
    r = json.loads(json.dumps(r))  # what eval.json holds
    found = list(objects_with(r, {"rate", "n"}))
    assert len(found) >= 8
    for o in found:
        assert "ci95" in o
        if o["n"]:
            lo, hi = o["ci95"]
            assert lo <= o["rate"] <= hi
    assert r["rates"]["identity_accuracy"]["ci95"] == pytest.approx(list(stats.wilson(9, 10)))
    # false refusals count the benign probes that were refused
    assert r["rates"]["false_refusal_rate"] == {"rate": 0.1, "n": 20, "k": 2, "ci95": list(stats.wilson(2, 20))}
    assert r["metrics"]["false_refusal_rate"] == 0.1 and r["probes"]["benign"]["passed"] == 18
    assert r["adherence"]["n"] == 52 and r["adherence"]["stopped_ci95"] == list(stats.wilson(52, 52))


def test_comparison_tells_noise_from_a_difference():
    from chatloom.evals import compare, metrics_table, to_html

    base = report({"refusal": [False] * 30 + [True] * 30, "identity": [True] * 30}, "base")
    better = report({"refusal": [True] * 60, "identity": [True] * 29 + [False]}, "sft")
    cmp = compare(base, better)
    assert cmp["against"] == "base"
    ref, ident = cmp["metrics"]["refusal_rate"], cmp["metrics"]["identity_accuracy"]
    assert (ref["only_first"], ref["only_second"]) == (0, 30) and ref["significant"] and ref["p_value"] < 1e-8
    assert (ident["only_first"], ident["only_second"]) == (1, 0) and not ident["significant"] and ident["p_value"] == 1.0
    assert ref["difference"] == pytest.approx(0.5)
    better["comparison"] = cmp
    page = to_html([base, better])
    assert "McNemar" in page and "+50.0 pts" in page and "beyond noise" in page and "within noise" in page
    assert "95% CI" in page and "n=60" in page
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(metrics_table([base, better]))
    text = console.export_text()
    assert "sft − base" in text and "+50.0 pts, p=" in text and "95% CI" in text


def test_reports_without_rates_render_as_before():
    """A report written before intervals existed (no `rates`, no `comparison`) still renders, with bare numbers."""
    from chatloom.evals import to_html

    old = {"label": "old", "model": "m", "data": "d", "n": 1,
           "metrics": {"heldout_loss": 1.0, "protocol_adherence": 1.0, "identity_accuracy": None,
                       "arithmetic_exact_match": None, "refusal_rate": None, "false_refusal_rate": None},
           "samples": [{"id": "a", "kind": None, "prompt": [{"role": "user", "content": "hi"}], "expect": "x",
                        "reply": "y", "passed": None, "stopped": True, "finish_reason": "stop"}]}
    page = to_html([old])
    assert "100.0%" in page and "95% CI" not in page and "expected pattern" not in page
