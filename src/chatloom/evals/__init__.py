"""Evaluation: held-out loss on supervised tokens, protocol adherence, probe suites (identity, arithmetic, refusals and
false refusals), side by side for two models as a table, JSON and an HTML report.

    from chatloom.evals import evaluate, to_html
    base, sft = evaluate("runs/base", "heldout.jsonl"), evaluate("runs/sft", "heldout.jsonl")
    Path("eval.html").write_text(to_html([base, sft]))
"""

from .evaluate import ACCEPTANCE, METRICS, acceptance, evaluate
from .probes import is_refusal, score
from .report import metrics_table, to_html

__all__ = ["evaluate", "acceptance", "ACCEPTANCE", "METRICS", "is_refusal", "score", "to_html", "metrics_table"]
