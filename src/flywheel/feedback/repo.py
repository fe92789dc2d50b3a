"""The prediction log, feedback, users and the review queue in the caller's transaction.

Functions take the caller's ``Session`` and never open one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from flywheel.store import ensure_user
from flywheel.store.schema import Example, Feedback, ModelVersion, Prediction, ReviewItem, User

__all__ = [
    "answer_rows",
    "answered_inputs",
    "answers_since",
    "feedback_by_external_id",
    "first_seen",
    "golden_answered",
    "golden_labels",
    "insert_feedback",
    "insert_predictions",
    "known_inputs",
    "lone_answers",
    "model_votes",
    "predictions_by_id",
    "probes_used",
    "queued",
    "recent_unanswered",
    "target_stats",
    "user_counts",
    "vote_rows",
]


def insert_predictions(s: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Log predictions: their users first, then one multi-row INSERT (Core, not the ORM's
    unit of work: the log's cost)."""
    for user_id in sorted({r["user_id"] for r in rows if r["user_id"]}):
        ensure_user(s, user_id)
    s.execute(insert(Prediction), list(rows))


def insert_feedback(s: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Store answers: their users first, then one multi-row INSERT."""
    for user_id in sorted({r["user_id"] for r in rows if r["user_id"]}):
        ensure_user(s, user_id)
    if rows:
        s.execute(insert(Feedback), list(rows))


def feedback_by_external_id(s: Session, ids: Iterable[str]) -> list[Any]:
    """The answers stored under any of ``ids`` (the clients' keys of their answers): id,
    key, the fingerprint stored with it, and what was answered."""
    wanted = set(ids)
    if not wanted:
        return []
    q = select(
        Feedback.id,
        Feedback.external_id,
        Feedback.body_sha256,
        Feedback.prediction_id,
        Feedback.label,
        Feedback.value,
        Feedback.correct,
    ).where(Feedback.external_id.in_(wanted))
    return list(s.execute(q).all())


def predictions_by_id(s: Session, ids: Iterable[str]) -> dict[str, Any]:
    """The rows an answer is checked against: label, value, probabilities, version and
    the user (pseudonym) it was made for."""
    q = select(
        Prediction.id,
        Prediction.user_id,
        Prediction.label,
        Prediction.value,
        Prediction.probabilities,
        Prediction.model_version,
    ).where(Prediction.id.in_(set(ids)))
    return {row.id: row for row in s.execute(q)}


def target_stats(s: Session, versions: Iterable[int]) -> dict[int, tuple[float, float]]:
    """(mean, standard deviation) of each regression version's training targets."""
    out = {}
    for version, spec in s.execute(
        select(ModelVersion.version, ModelVersion.spec).where(
            ModelVersion.version.in_(set(versions))
        )
    ):
        hparams = (spec or {}).get("hparams", {})
        if "y_mean" in hparams and "y_std" in hparams:
            out[int(version)] = (float(hparams["y_mean"]), float(hparams["y_std"]))
    return out


def queued(s: Session, ids: Iterable[str]) -> set[str]:
    """Of ``ids``, the predictions the review queue handed out."""
    return set(
        s.scalars(select(ReviewItem.prediction_id).where(ReviewItem.prediction_id.in_(set(ids))))
    )


def answers_since(s: Session, since: datetime | None) -> int:
    """Answers given after ``since`` (all: None), quarantined users' left out."""
    q = (
        select(func.count())
        .select_from(Feedback)
        .outerjoin(User, User.id == Feedback.user_id)
        .where(User.quarantined_at.is_(None))
    )
    if since is not None:
        q = q.where(Feedback.created_at > since)
    return int(s.scalar(q) or 0)


def answer_rows(
    s: Session, *, include_used: bool = False, until: datetime | None = None
) -> list[Any]:
    """Feedback with what it is about and who gave it, oldest first: (feedback, input
    hash, predicted label, predicted value, trust, trust detail, quarantined at).

    Without ``include_used`` only feedback not yet turned into an example; with
    ``until`` only what was given by then.
    """
    used = select(Example.feedback_id).where(Example.feedback_id.is_not(None))
    q = (
        select(
            Feedback,
            Prediction.input_hash,
            Prediction.label,
            Prediction.value,
            User.trust,
            User.trust_detail,
            User.quarantined_at,
        )
        .join(Prediction, Prediction.id == Feedback.prediction_id)
        .outerjoin(User, User.id == Feedback.user_id)
        .order_by(Feedback.created_at, Feedback.id)
    )
    if not include_used:
        q = q.where(Feedback.id.not_in(used))
    if until is not None:
        q = q.where(Feedback.created_at <= until)
    return list(s.execute(q).all())


def first_seen(s: Session, users: set[str]) -> dict[str, datetime]:
    """When each of ``users`` was first seen."""
    return dict(s.execute(select(User.id, User.created_at).where(User.id.in_(users))).all())


def vote_rows(s: Session) -> list[Any]:
    """(user, input hash, label given, correct, predicted label) of every named answer."""
    return list(
        s.execute(
            select(
                Feedback.user_id,
                Prediction.input_hash,
                Feedback.label,
                Feedback.correct,
                Prediction.label,
            )
            .join(Prediction, Prediction.id == Feedback.prediction_id)
            .where(Feedback.user_id.is_not(None))
            # By content, then time: the trust estimate must not follow how concurrent
            # answers interleaved (its sums would differ in their last bits).
            .order_by(Prediction.input_hash, Feedback.user_id, Feedback.created_at, Feedback.id)
        ).all()
    )


def golden_labels(s: Session, items: set[str]) -> dict[str, str]:
    """Input hash → known label, for the golden probes among ``items``."""
    return {
        h: str(lab)
        for h, lab in s.execute(
            select(Prediction.input_hash, Example.label)
            .join(ReviewItem, ReviewItem.prediction_id == Prediction.id)
            .join(Example, Example.id == ReviewItem.golden_example_id)
        )
        if h in items
    }


def model_votes(s: Session, items: set[str]) -> dict[str, tuple[int, float, str]]:
    """One model vote per input: (version, confidence, label) of the newest version's
    prediction, its most confident one if that version answered the input more than
    once. Confidence is rounded: a micro-batch changes its last bits, and trust must
    not follow them."""
    out: dict[str, tuple[int, float, str]] = {}
    for h, version, lab, probs in s.execute(
        select(
            Prediction.input_hash,
            Prediction.model_version,
            Prediction.label,
            Prediction.probabilities,
        ).where(Prediction.input_hash.in_(items), Prediction.label.is_not(None))
    ):
        vote = (int(version), round(max(probs.values()), 4) if probs else 0.0, str(lab))
        if h not in out or vote > out[h]:
            out[h] = vote
    return out


def user_counts(s: Session) -> tuple[dict[str | None, int], dict[str | None, int]]:
    """(answers per user, training rows per user that came from their feedback)."""
    answers = dict(
        s.execute(select(Feedback.user_id, func.count()).group_by(Feedback.user_id)).all()
    )
    rows_used = dict(
        s.execute(
            select(Example.user_id, func.count())
            .where(Example.origin == "feedback")
            .group_by(Example.user_id)
        ).all()
    )
    return answers, rows_used


def recent_unanswered(s: Session, window: int) -> list[Any]:
    """(id, probabilities, input hash) of the newest ``window`` classified predictions
    nobody answered yet."""
    answered = select(Feedback.prediction_id)
    return list(
        s.execute(
            select(Prediction.id, Prediction.probabilities, Prediction.input_hash)
            .where(Prediction.label.is_not(None), Prediction.id.not_in(answered))
            .order_by(Prediction.created_at.desc())
            .limit(window)
        ).all()
    )


def known_inputs(s: Session, hashes: set[str]) -> set[str]:
    """Of ``hashes``, the inputs whose label is known already: an example, or answered."""
    return set(
        s.scalars(select(Example.input_hash).where(Example.input_hash.in_(hashes)))
    ) | answered_inputs(s, hashes)


def answered_inputs(s: Session, hashes: set[str]) -> set[str]:
    return set(
        s.scalars(
            select(Prediction.input_hash)
            .join(Feedback, Feedback.prediction_id == Prediction.id)
            .where(Prediction.input_hash.in_(hashes))
        )
    )


def golden_answered(s: Session, user: str) -> int:
    """How many golden probes ``user`` has answered."""
    return int(
        s.scalar(
            select(func.count())
            .select_from(Feedback)
            .join(ReviewItem, ReviewItem.prediction_id == Feedback.prediction_id)
            .where(Feedback.user_id == user, ReviewItem.golden_example_id.is_not(None))
        )
        or 0
    )


def lone_answers(s: Session, asker: str, window: int) -> list[str]:
    """Inputs exactly one named user answered — someone other than ``asker`` — and that
    are not imported examples, among the newest ``window`` answers: what a second
    opinion can check. Spread over the users who gave them (round-robin, the users
    with the fewest answers first), newest first within each user."""
    recent = (
        select(Feedback.user_id, Prediction.input_hash, Feedback.created_at)
        .join(Prediction, Prediction.id == Feedback.prediction_id)
        .where(Feedback.user_id.is_not(None))
        .order_by(Feedback.created_at.desc(), Feedback.id)
        .limit(window)
    ).subquery()
    lone = (
        select(recent.c.input_hash)
        .group_by(recent.c.input_hash)
        .having(func.count(func.distinct(recent.c.user_id)) == 1)
    )
    imported = select(Example.input_hash).where(Example.origin != "feedback")
    rows = s.execute(
        select(recent.c.user_id, recent.c.input_hash)
        .where(
            recent.c.input_hash.in_(lone),
            recent.c.user_id != asker,
            recent.c.input_hash.not_in(imported),
        )
        .order_by(recent.c.created_at.desc(), recent.c.input_hash)
    ).all()
    by_user: dict[str, list[str]] = {}
    for user, digest in rows:
        if digest not in by_user.setdefault(str(user), []):
            by_user[str(user)].append(digest)
    mine = set(
        s.scalars(
            select(Prediction.input_hash)
            .join(Feedback, Feedback.prediction_id == Prediction.id)
            .where(Feedback.user_id == asker)
        )
    )
    queues = [
        [h for h in hs if h not in mine]
        for _, hs in sorted(by_user.items(), key=lambda kv: (len(kv[1]), kv[0]))
    ]
    return [q[r] for r in range(max(map(len, queues), default=0)) for q in queues if r < len(q)]


def probes_used(s: Session) -> int:
    """How many golden probes the review queue made so far."""
    return int(
        s.scalar(
            select(func.count())
            .select_from(ReviewItem)
            .where(ReviewItem.golden_example_id.is_not(None))
        )
        or 0
    )
