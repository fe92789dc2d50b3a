"""The monitoring windows' queries, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from flywheel.store.schema import DriftWindow, Feedback, Prediction, ReviewItem, User

__all__ = [
    "add_window",
    "alarms_since",
    "answered_calls",
    "answers",
    "answers_mark",
    "calls_after",
    "calls_in",
    "last_window",
    "previous_run",
    "update_observed",
    "windows",
]


def last_window(s: Session, version: int) -> DriftWindow | None:
    q = select(DriftWindow).where(DriftWindow.model_version == version)
    return s.scalars(q.order_by(DriftWindow.id.desc()).limit(1)).first()


def _after(at: datetime, pid: str) -> Any:
    return or_(Prediction.created_at > at, and_(Prediction.created_at == at, Prediction.id > pid))


def calls_after(
    s: Session, version: int, after: tuple[datetime, str] | None, limit: int
) -> list[Prediction]:
    """The version's calls after ``after`` (created_at, id), oldest first; golden probes
    (a label the project already knew) are not production traffic and are left out."""
    golden = select(ReviewItem.prediction_id).where(ReviewItem.golden_example_id.is_not(None))
    q = select(Prediction).where(Prediction.model_version == version, Prediction.id.not_in(golden))
    if after is not None:
        q = q.where(_after(*after))
    return list(s.scalars(q.order_by(Prediction.created_at, Prediction.id).limit(limit)))


def add_window(s: Session, **fields: Any) -> DriftWindow:
    w = DriftWindow(**fields)
    s.add(w)
    s.flush()
    return w


def alarms_since(s: Session, since: datetime | None) -> int:
    """Windows that alarmed after ``since`` (all: None)."""
    q = select(func.count()).select_from(DriftWindow).where(DriftWindow.alarm.is_(True))
    if since is not None:
        q = q.where(DriftWindow.created_at > since)
    return int(s.scalar(q) or 0)


def windows(s: Session, limit: int, version: int | None = None) -> list[DriftWindow]:
    """The newest ``limit`` windows, oldest first."""
    q = select(DriftWindow)
    if version is not None:
        q = q.where(DriftWindow.model_version == version)
    newest = list(s.scalars(q.order_by(DriftWindow.id.desc()).limit(limit)))
    return newest[::-1]


def _in(w: DriftWindow) -> Any:
    return and_(
        Prediction.model_version == w.model_version,
        or_(Prediction.id == w.first_id, _after(w.first_at, w.first_id)),
        or_(Prediction.id == w.last_id, ~_after(w.last_at, w.last_id)),
    )


def calls_in(s: Session, w: DriftWindow) -> list[Prediction]:
    """A closed window's calls, oldest first."""
    q = select(Prediction).where(_in(w)).order_by(Prediction.created_at, Prediction.id)
    return list(s.scalars(q))


def previous_run(s: Session, version: int) -> list[DriftWindow]:
    """The newest windows of the version in production before ``version`` (the traffic
    it was replaced on) that share the newest one's alarm state, newest first."""
    q = select(DriftWindow).where(DriftWindow.model_version != version)
    run: list[DriftWindow] = []
    for w in s.scalars(q.order_by(DriftWindow.id.desc()).limit(100)):
        if run and (w.alarm != run[0].alarm or w.model_version != run[0].model_version):
            break
        run.append(w)
    return run


def answered_calls(
    s: Session, version: int, before: tuple[datetime, str], limit: int = 1000
) -> list[tuple[dict[str, Any], str | None, bool]]:
    """The version's calls before ``before`` (created_at, id) that got an answer from a
    user not quarantined, newest first: (probabilities, predicted label, right) by the
    newest answer to each call. Answers through the review queue count here: the queue
    picks calls by their confidence, and a calibration of P(right | confidence) is not
    biased by choosing rows on the confidence."""
    q = (
        select(Prediction.id, Prediction.probabilities, Prediction.label, Feedback.label,
               Feedback.correct)
        .join(Feedback, Feedback.prediction_id == Prediction.id)
        .outerjoin(User, User.id == Feedback.user_id)
        .where(
            Prediction.model_version == version,
            User.quarantined_at.is_(None),
            ~or_(_after(*before), Prediction.id == before[1]),
        )
        .order_by(Prediction.created_at.desc(), Feedback.created_at)
    )  # fmt: skip
    out: dict[str, tuple[dict[str, Any], str | None, bool]] = {}
    for pid, probs, predicted, label, correct in s.execute(q):
        if correct is None and label is None:
            continue
        right = bool(correct) if correct is not None else label == predicted
        if pid not in out and len(out) >= limit:
            break
        out[pid] = (probs, predicted, right)
    return list(out.values())


def answers(s: Session, w: DriftWindow) -> tuple[int, int]:
    """(answered, right): the window's calls that got an answer outside the review queue
    (the queue picks uncertain calls: its answers would understate the accuracy), from
    users not quarantined, and how many of them the model had right (by the newest
    answer to each call)."""
    q = (
        select(Prediction.id, Prediction.label, Feedback.label, Feedback.correct)
        .join(Feedback, Feedback.prediction_id == Prediction.id)
        .outerjoin(User, User.id == Feedback.user_id)
        .where(
            _in(w),
            Feedback.via_queue.is_(False),
            User.quarantined_at.is_(None),
        )
        .order_by(Feedback.created_at)
    )
    verdict: dict[str, bool] = {}
    for pid, predicted, label, correct in s.execute(q):
        if correct is not None:
            verdict[pid] = bool(correct)
        elif label is not None:
            verdict[pid] = label == predicted
    return len(verdict), sum(verdict.values())


def answers_mark(s: Session) -> tuple[Any, ...]:
    """What changes when a window's observed accuracy can: answers given, changed or
    erased, users quarantined or released."""
    fb = s.execute(select(func.count(), func.max(Feedback.created_at))).one()
    held = s.scalar(select(func.count()).select_from(User).where(User.quarantined_at.is_not(None)))
    return (*fb, held)


def update_observed(w: DriftWindow, answered: int, right: int) -> None:
    w.answered = answered
    w.observed_accuracy = right / answered if answered else None
