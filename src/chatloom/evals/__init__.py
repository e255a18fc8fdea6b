"""Evaluation: held-out loss on supervised tokens, protocol adherence, probe suites (identity, arithmetic, refusals and
false refusals), side by side for two models as a table, JSON and an HTML report.

    from chatloom.evals import evaluate, to_html
    base, sft = evaluate("runs/base", "heldout.jsonl"), evaluate("runs/sft", "heldout.jsonl")
    sft["comparison"] = compare(base, sft)     # paired McNemar per rate: is the difference beyond noise?
    Path("eval.html").write_text(to_html([base, sft]))

Every rate comes with n and a 95% Wilson interval (`report["rates"]`); `evaluate(model, probes="mine.jsonl")` scores
your own probes (`probefile.py`); `imitation.analyse` puts each answer next to the nearest training answer.
"""

from .evaluate import ACCEPTANCE, METRICS, acceptance, compare, evaluate
from .probefile import Probe, load_probes
from .probes import is_refusal, score
from .report import imitation_table, metrics_table, to_html
from .stats import mcnemar_exact, wilson

__all__ = ["evaluate", "acceptance", "compare", "ACCEPTANCE", "METRICS", "is_refusal", "score", "to_html",
           "metrics_table", "imitation_table", "load_probes", "Probe", "wilson", "mcnemar_exact"]
