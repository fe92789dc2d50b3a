"""Evaluation: metrics and the champion/challenger gate."""

from flywheel.evaluation.gate import GateDecision, decide, mcnemar
from flywheel.evaluation.metrics import classification_report

__all__ = ["GateDecision", "classification_report", "decide", "mcnemar"]
