"""Forget a user: erase their rows from every table, find every model trained on them.

What is the user's: their predictions (and the inputs they sent), the feedback they
gave, feedback anyone gave on their predictions (it describes their input), the
examples made from either, and the examples imported under their id (e.g. a
speaker's recordings). Inputs are deleted from the blob folder once no row of
another user still refers to the same bytes.

A model version is affected when its dataset version held one of the erased rows,
or when it was warm-started from an affected version (it carries the weights). The
caller (``PrivacyService.erase``, in ``flywheel.loop.forget``) takes affected versions
out of service and retrains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from flywheel.store.schema import (
    JSON_SUMMARIES,
    AuditRecord,
    DatasetVersion,
    DatasetVersionExample,
    Example,
    Explanation,
    Feedback,
    ModelVersion,
    Prediction,
    PrivacyCharge,
    ReviewItem,
    User,
    utcnow,
)

__all__ = [
    "Erasure",
    "affected_versions",
    "audit",
    "erase",
    "still_referenced",
    "subject_digest",
    "table_counts",
    "totals",
]

#: Every table that holds rows about end users, with the column naming the user.
USER_TABLES: dict[str, Any] = {
    "predictions": Prediction,
    "feedback": Feedback,
    "examples": Example,
    "privacy_ledger": PrivacyCharge,
}


def subject_digest(pseudonym: str) -> str:
    """What the audit keeps of the user: proves who was forgotten to someone who
    knows the id, reveals nothing to someone who does not."""
    return hashlib.sha256(b"flywheel-forget:" + pseudonym.encode()).hexdigest()


def totals(s: Session) -> dict[str, int]:
    """Rows in each table that can hold a user's data."""
    out = {
        name: int(s.scalar(select(func.count()).select_from(t)) or 0)
        for name, t in USER_TABLES.items()
    }
    out["users"] = int(s.scalar(select(func.count()).select_from(User)) or 0)
    out["review_items"] = int(s.scalar(select(func.count()).select_from(ReviewItem)) or 0)
    return out


def table_counts(s: Session, user: str) -> dict[str, int]:
    """Rows naming ``user`` in each table (and the user row itself)."""
    out = {
        name: int(s.scalar(select(func.count()).where(t.user_id == user)) or 0)
        for name, t in USER_TABLES.items()
    }
    out["users"] = int(s.scalar(select(func.count()).where(User.id == user)) or 0)
    return out


@dataclass
class Erasure:
    user: str
    counts_before: dict[str, int]
    predictions: int = 0
    feedback: int = 0
    examples: int = 0
    review_items: int = 0
    ledger_rows: int = 0
    input_hashes: set[str] = field(default_factory=set)
    #: where their imported examples came from (file names can carry their name)
    source_paths: set[str] = field(default_factory=set)
    #: blobs derived from their inputs (explanation overlays)
    derived: set[str] = field(default_factory=set)
    explanations: int = 0
    #: dataset version id -> how many of its rows were erased
    dataset_versions: dict[int, int] = field(default_factory=dict)
    affected: list[int] = field(default_factory=list)

    @property
    def inputs_digest(self) -> str:
        """One digest over the erased inputs' hashes (the hashes themselves are gone)."""
        h = hashlib.sha256()
        for d in sorted(self.input_hashes):
            h.update(bytes.fromhex(d))
        return h.hexdigest()


def affected_versions(s: Session, dataset_versions: set[int]) -> list[int]:
    """Versions trained on one of ``dataset_versions``, or warm-started from such a one."""
    out: set[int] = set()
    for mv in s.scalars(select(ModelVersion).order_by(ModelVersion.version)):
        if mv.training_config.get("imported"):
            continue  # trained elsewhere: checked on the rows, never trained on them
        warm = bool(mv.training_config.get("warm_start", False))
        if mv.dataset_version_id in dataset_versions or (
            warm and mv.parent_version is not None and mv.parent_version in out
        ):
            out.add(mv.version)
    return sorted(out)


def erase(s: Session, user: str) -> Erasure:
    """Delete everything about ``user`` in the caller's transaction (blobs: caller)."""
    er = Erasure(user=user, counts_before=table_counts(s, user))
    preds = s.execute(
        select(Prediction.id, Prediction.input_hash).where(Prediction.user_id == user)
    ).all()
    pred_ids = [p for p, _ in preds]
    er.input_hashes |= {h for _, h in preds}
    fb_ids = list(
        s.scalars(
            select(Feedback.id).where(
                or_(Feedback.user_id == user, Feedback.prediction_id.in_(pred_ids))
            )
        )
    )
    exs = s.execute(
        select(Example.id, Example.input_hash, Example.source_path).where(
            or_(Example.user_id == user, Example.feedback_id.in_(fb_ids))
        )
    ).all()
    ex_ids = [e for e, _, _ in exs]
    er.input_hashes |= {h for _, h, _ in exs}
    er.source_paths = {p for _, _, p in exs if p}
    # Golden probes the review queue made of their examples: predictions (no user) on
    # their inputs, and anyone's answers to those.
    probes = list(
        s.scalars(select(ReviewItem.prediction_id).where(ReviewItem.golden_example_id.in_(ex_ids)))
    )
    if probes:
        pred_ids += probes
        fb_ids += list(s.scalars(select(Feedback.id).where(Feedback.prediction_id.in_(probes))))
    for dv_id, n in s.execute(
        select(DatasetVersionExample.dataset_version_id, func.count())
        .where(DatasetVersionExample.example_id.in_(ex_ids))
        .group_by(DatasetVersionExample.dataset_version_id)
    ):
        er.dataset_versions[int(dv_id)] = int(n)
    er.affected = affected_versions(s, set(er.dataset_versions))

    er.review_items = _count_delete(
        s,
        ReviewItem,
        or_(ReviewItem.prediction_id.in_(pred_ids), ReviewItem.golden_example_id.in_(ex_ids)),
    )
    _count_delete(s, DatasetVersionExample, DatasetVersionExample.example_id.in_(ex_ids))
    er.examples = _count_delete(s, Example, Example.id.in_(ex_ids))
    er.feedback = _count_delete(s, Feedback, Feedback.id.in_(fb_ids))
    er.predictions = _count_delete(s, Prediction, Prediction.id.in_(pred_ids))
    er.ledger_rows = _count_delete(s, PrivacyCharge, PrivacyCharge.user_id == user)
    # Explanations of their inputs show those inputs (and the overlays draw them).
    gone = Explanation.input_hash.in_(er.input_hashes)
    er.derived = {h for h in s.scalars(select(Explanation.png_hash).where(gone)) if h}
    er.explanations = _count_delete(s, Explanation, gone)
    _count_delete(s, User, User.id == user)
    _redact_json(s, {user, *er.source_paths}, er.input_hashes)
    now = utcnow()
    for dv_id, n in er.dataset_versions.items():
        dv = s.get(DatasetVersion, dv_id)
        assert dv is not None
        dv.erased = {"rows": n + int((dv.erased or {}).get("rows", 0)), "at": now.isoformat()}
    s.flush()
    return er


FORGOTTEN = "<forgotten user>"


def _hit(text: str, contains: set[str], exact: AbstractSet[str]) -> bool:
    return text in exact or any(n in text for n in contains)


def redact(
    value: Any, contains: set[str], exact: AbstractSet[str] = frozenset()
) -> tuple[Any, bool]:
    """``value`` with every string or key that contains one of ``contains`` (or equals
    one of ``exact``) replaced; (new value, changed)."""
    if isinstance(value, str):
        return (FORGOTTEN, True) if _hit(value, contains, exact) else (value, False)
    if isinstance(value, dict):
        out, changed = {}, False
        for k, v in value.items():
            nv, c = redact(v, contains, exact)
            nk = FORGOTTEN if _hit(str(k), contains, exact) else k
            changed |= c or nk != k
            out[nk] = nv
        return out, changed
    if isinstance(value, list):
        items = [redact(v, contains, exact) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def _redact_json(s: Session, contains: set[str], exact: set[str]) -> None:
    for table, cols in JSON_SUMMARIES:
        for row in s.scalars(select(table)):
            for col in cols:
                new, changed = redact(getattr(row, col), contains, exact)
                if changed:
                    setattr(row, col, new)


def _count_delete(s: Session, table: Any, where: Any) -> int:
    n = int(s.scalar(select(func.count()).select_from(table).where(where)) or 0)
    if n:
        s.execute(delete(table).where(where))
    return n


def still_referenced(s: Session, hashes: set[str]) -> set[str]:
    """Of ``hashes``, those some remaining row still refers to (another user's copy)."""
    if not hashes:
        return set()
    keep = set(s.scalars(select(Example.input_hash).where(Example.input_hash.in_(hashes))))
    keep |= set(s.scalars(select(Prediction.input_hash).where(Prediction.input_hash.in_(hashes))))
    return keep


def audit(s: Session, er: Erasure, detail: dict[str, Any]) -> AuditRecord:
    rec = AuditRecord(action="forget", subject=subject_digest(er.user), detail=detail)
    s.add(rec)
    s.flush()
    return rec
