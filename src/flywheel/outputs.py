"""What a model's raw output means: class probabilities, the answer, or a value.

One place for the softmax and for turning a row of outputs into the answer a client
sees, shared by training's scoring, every serving backend, the review queue's probes
and an exported bundle's runtime. NumPy only: the ONNX runtime path imports it
without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["finite_json", "read_output", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, classes]`` logits (shifted by each row's maximum)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def read_output(
    labels: Sequence[str], row: np.ndarray
) -> tuple[str | None, dict[str, float] | None, float | None]:
    """(label, probabilities, value) of one row of outputs.

    Classification (``labels`` given): the arg-max label and every label's probability;
    regression (no labels): the value.
    """
    if not labels:
        return None, None, float(row)
    probabilities = {lab: float(p) for lab, p in zip(labels, row, strict=True)}
    return labels[int(row.argmax())], probabilities, None


def finite_json(value: Any) -> Any:
    """``value`` (JSON-shaped) with every number JSON cannot hold (NaN, ±Infinity) as
    null: what is stored and printed stays valid JSON whatever a run produced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value
