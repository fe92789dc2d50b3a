"""The records of the loop's traffic: a prediction as answered, an answer about it as
received and as stored, and who contributed a dataset version's new rows."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from flywheel.errors import InputError, NotFoundError
from flywheel.outputs import read_output

__all__ = [
    "FeedbackIn",
    "FeedbackResult",
    "PredictionResult",
    "ValueRange",
    "answer",
    "check_feedback",
    "contribution",
]


@dataclass(frozen=True)
class PredictionResult:
    prediction_id: str
    model_version: int
    latency_ms: float
    label: str | None = None  # classification
    probabilities: dict[str, float] | None = None
    value: float | None = None  # regression


def answer(
    version: int,
    labels: Sequence[str],
    output: np.ndarray,
    *,
    content: bytes,
    user_id: str | None,
    latency_ms: float,
) -> tuple[PredictionResult, dict[str, Any]]:
    """(the client's answer, the prediction log's row) of one row of a model version's
    outputs, for the input ``content`` (as kept) from ``user_id`` (a pseudonym).

    An answer that is not a finite number (features far beyond anything the model was
    trained on can overflow it) is refused: JSON has no NaN, and neither does the log.
    """
    if not np.isfinite(output).all():
        raise InputError(
            "the model's answer to this input is not a finite number; are its values far "
            "outside what the model was trained on?"
        )
    pid = str(uuid.uuid4())
    label, probabilities, value = read_output(labels, output)
    result = PredictionResult(pid, version, latency_ms, label, probabilities, value)
    row = {
        "id": pid,
        "model_version": version,
        "user_id": user_id,
        "content": content,
        "label": label,
        "value": value,
        "probabilities": probabilities or {},
        "latency_ms": latency_ms,
        "created_at": datetime.now(UTC),
    }
    return result, row


@dataclass(frozen=True)
class FeedbackIn:
    """One user's answer about a prediction, as received."""

    prediction_id: str
    label: str | None = None
    correct: bool | None = None
    value: float | None = None
    user_id: str | None = None
    #: only about a prediction made for the same user (a caller without a key): any
    #: other is answered as unknown, so that its existence is not told either
    only_own: bool = False


@dataclass(frozen=True)
class FeedbackResult:
    feedback_id: str
    prediction_id: str
    label: str | None
    value: float | None = None
    agreed: bool | None = None  # did the user agree with the prediction (None: not judged)


@dataclass(frozen=True)
class ValueRange:
    """The true values a regression model's feedback may give: within ``z`` standard
    deviations of its training targets' mean."""

    mean: float
    std: float
    z: float

    def check(self, value: float) -> None:
        if abs(value - self.mean) > self.z * self.std:
            raise InputError(
                f"'value' {value!r} is out of range: more than {self.z:g} standard deviations "
                f"from the mean of the model's training targets ({self.mean:.4g} ± "
                f"{self.z:g} × {self.std:.4g}); a value that far out is refused "
                "(setting max_value_z)"
            )


def check_feedback(pred: Any, it: FeedbackIn, values: ValueRange | None = None) -> FeedbackResult:
    """Check one answer against its prediction's row (``pred``: its label, value,
    probabilities and model version; None: unknown prediction) and, for regression, the
    range of true values its model version takes."""
    label, correct, value = it.label, it.correct, it.value
    if pred is None:
        raise NotFoundError("prediction", it.prediction_id)
    if pred.value is not None or pred.label is None:  # a regression prediction
        if label is not None:
            raise InputError(
                "this prediction is a regression value: send 'value' (the true value), not 'label'"
            )
        if value is not None and not np.isfinite(value):
            raise InputError(f"'value' must be a finite number; got {value!r}")
        if value is not None and values is not None:
            values.check(value)
        agreed = correct if value is None else None
    else:
        if value is not None:
            raise InputError(
                "this prediction is a class: send 'label' (the true label), not 'value'"
            )
        labels = list(pred.probabilities)
        if label is not None and label not in labels:
            raise InputError(
                f"label {label!r} is not one of model v{pred.model_version}'s labels: "
                f"{', '.join(labels)}"
            )
        if correct is True and label is not None and label != pred.label:
            raise InputError(
                f"'correct': true contradicts label {label!r}: the prediction was {pred.label!r}"
            )
        agreed = correct if correct is not None else label == pred.label
    return FeedbackResult(str(uuid.uuid4()), it.prediction_id, label, value, agreed)


def contribution(
    users: Sequence[str | None],
    first_seen: dict[str, datetime],
    since: datetime,
    *,
    first_feedback: bool,
) -> dict[str, Any]:
    """Who gave a dataset version's new rows (``users``, one per row): the largest single
    share, and the share from users first seen after ``since`` (the parent version).

    Before any feedback has been used (``first_feedback``) every user is new: the gate
    then has nothing to compare with, so it reports the share but does not flag it.
    """
    named = [u for u in users if u is not None]
    counts = Counter(named)
    top_user, top = counts.most_common(1)[0] if counts else (None, 0)
    fresh = sum(1 for u in named if first_seen.get(u) and first_seen[u] > since)
    n = len(users)
    return {
        "first_feedback": first_feedback,
        "rows": n,
        "users": len(counts),
        "top_user": top_user,
        "top_user_share": round(top / n, 4) if n else 0.0,
        "new_user_share": round(fresh / n, 4) if n else 0.0,
    }
