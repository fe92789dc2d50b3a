"""Evaluation: metrics, scoring, and the champion/challenger gate with its checks.

Live accuracy and call statistics (monitoring) are in ``flywheel.evaluation.service``.
"""

from flywheel.evaluation.gate import (
    GateDecision,
    GatePolicy,
    Reference,
    class_check,
    decide,
    decide_regression,
    judge,
    mcnemar,
    reference_check,
    wilcoxon,
    with_check,
    with_splits,
)
from flywheel.evaluation.metrics import classification_report, regression_report
from flywheel.evaluation.scoring import score

__all__ = [
    "GateDecision",
    "GatePolicy",
    "Reference",
    "class_check",
    "classification_report",
    "decide",
    "decide_regression",
    "judge",
    "mcnemar",
    "reference_check",
    "regression_report",
    "score",
    "wilcoxon",
    "with_check",
    "with_splits",
]
