"""Evaluation: metrics and the champion/challenger gate."""

from flywheel.evaluation.gate import (
    GateDecision,
    class_check,
    decide,
    decide_regression,
    mcnemar,
    reference_check,
    wilcoxon,
    with_check,
)
from flywheel.evaluation.metrics import classification_report, regression_report

__all__ = [
    "GateDecision",
    "class_check",
    "classification_report",
    "decide",
    "decide_regression",
    "mcnemar",
    "reference_check",
    "regression_report",
    "wilcoxon",
    "with_check",
]
