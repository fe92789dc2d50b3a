"""Scoring a model's outputs on labelled rows: the report, and a score per row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flywheel.evaluation.metrics import classification_report, regression_report

__all__ = ["score"]


def score(
    outputs: np.ndarray, y: np.ndarray, labels: Sequence[str]
) -> tuple[dict[str, Any], np.ndarray]:
    """(report, per-row score) of ``outputs`` against ``y``.

    Classification (``labels`` given): the classification report, and whether each row
    was right; regression (no labels): the regression report, and each row's squared
    error. The per-row scores are what the gate's paired tests compare.
    """
    if not labels:
        return regression_report(y, outputs), (outputs - y) ** 2
    pred = outputs.argmax(1)
    return classification_report(y, pred, list(labels)), pred == y
