"""The queries behind live monitoring (calls and feedback per version, label and
minute), in the caller's transaction. Golden probes are the review queue's own checks,
not calls from users: every count of calls leaves them out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flywheel.store.schema import Feedback, Prediction, ReviewItem

__all__ = ["call_times", "calls_per_label", "calls_per_version", "feedback_counts", "value_pairs"]


def _probes() -> Any:
    return select(ReviewItem.prediction_id).where(ReviewItem.golden_example_id.is_not(None))


def calls_per_version(s: Session) -> dict[int, int]:
    return dict(
        s.execute(
            select(Prediction.model_version, func.count())
            .where(Prediction.id.not_in(_probes()))
            .group_by(Prediction.model_version)
        ).all()
    )


def calls_per_label(s: Session) -> dict[str | None, int]:
    return dict(
        s.execute(
            select(Prediction.label, func.count())
            .where(Prediction.label.is_not(None), Prediction.id.not_in(_probes()))
            .group_by(Prediction.label)
        ).all()
    )


def call_times(s: Session, since: datetime) -> list[datetime]:
    """When each call since ``since`` was made."""
    return list(
        s.scalars(
            select(Prediction.created_at).where(
                Prediction.created_at >= since, Prediction.id.not_in(_probes())
            )
        ).all()
    )


def feedback_counts(s: Session) -> list[Any]:
    """(model version, correct, answers) of the feedback on each version's predictions."""
    return list(
        s.execute(
            select(Prediction.model_version, Feedback.correct, func.count())
            .join(Prediction, Prediction.id == Feedback.prediction_id)
            .group_by(Prediction.model_version, Feedback.correct)
        ).all()
    )


def value_pairs(s: Session) -> list[Any]:
    """(model version, predicted value, true value) of answered regression predictions."""
    return list(
        s.execute(
            select(Prediction.model_version, Prediction.value, Feedback.value)
            .join(Prediction, Prediction.id == Feedback.prediction_id)
            .where(Feedback.value.is_not(None), Prediction.value.is_not(None))
        ).all()
    )
