"""Evaluation: metrics and the champion/challenger gate."""

from flywheel.evaluation.gate import GateDecision, decide, decide_regression, mcnemar, wilcoxon
from flywheel.evaluation.metrics import classification_report, regression_report

__all__ = [
    "GateDecision",
    "classification_report",
    "decide",
    "decide_regression",
    "mcnemar",
    "regression_report",
    "wilcoxon",
]
