"""Classification metrics on the held-out split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classification_report", "regression_report"]


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: truth)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    k = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=k, zero_division=0
    )
    cm = confusion_matrix(y_true, y_pred, labels=k)
    n = len(y_true)
    return {
        "accuracy": float((y_true == y_pred).mean()) if n else 0.0,
        "n": int(n),
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": cm.astype(int).tolist(),
    }


def regression_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MSE, RMSE, MAE and R² on the held-out split."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n = len(y_true)
    if n == 0:
        return {"mse": 0.0, "rmse": 0.0, "mae": 0.0, "r2": 0.0, "n": 0}
    err = y_pred - y_true
    mse = float(np.mean(err**2))
    var = float(np.var(y_true))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - mse / var if var > 0 else 0.0,
        "n": int(n),
    }
