"""Answers kept under a client's key (``external_id``), revised after the fact: changed,
or withdrawn (Label Studio's annotators edit and delete their annotations).

An answer not yet curated was never trained on: it is changed in place, or deleted.

An answer already curated into a dataset version is part of what that version's models
were trained on. The version stays as it is (a record of what they learned from); its
rows made from the answer are left out of a new dataset version (source ``revised
feedback``), which the next retrain starts from, and are unlinked from the answer. A
changed answer is then curated afresh, with its new label, by the next retrain; a
withdrawn one is deleted. Models trained on the old answer keep serving until a retrain
replaces them: a withdrawal is a correction, not an erasure (``flywheel forget`` is).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.context import Context
from flywheel.data import repo as data_repo
from flywheel.errors import InputError, ProjectError
from flywheel.feedback import repo
from flywheel.feedback.records import FeedbackIn, ValueRange, check_feedback, fingerprint
from flywheel.store import lock_training_rows, retry_locked
from flywheel.store.schema import Example, Feedback

__all__ = ["REVISED", "RevisionService"]

#: the source of a dataset version that leaves out rows of revised answers
REVISED = "revised feedback"


class RevisionService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def revise(
        self,
        external_ids: Sequence[str],
        *,
        label: str | None = None,
        value: float | None = None,
        withdraw: bool = False,
    ) -> dict[str, Any]:
        """Change the answers kept under ``external_ids`` to ``label`` (or ``value``), or
        withdraw them; one transaction. Returns which were found (``revised``: key →
        feedback id), which were not (``missing``), and the dataset version made to
        leave out rows already curated from them (None: none was needed)."""
        if withdraw == (label is not None or value is not None):
            raise InputError("a revision either withdraws answers or gives a 'label' or 'value'")
        if label is not None and value is not None:
            raise InputError("a revision gives a 'label' or a 'value', not both")
        ids = sorted(set(external_ids))
        return retry_locked(functools.partial(self._revise, ids, label, value, withdraw))

    def _revise(
        self, ids: list[str], label: str | None, value: float | None, withdraw: bool
    ) -> dict[str, Any]:
        with self.ctx.db.session() as s:
            lock_training_rows(s)  # the newest version read here is still the newest
            rows = list(s.scalars(select(Feedback).where(Feedback.external_id.in_(ids))))
            if not withdraw:
                self._check(s, rows, label, value)
            version, left_out = self._leave_out(s, [r.id for r in rows], withdraw)
            revised = {str(r.external_id): r.id for r in rows}
            for r in rows if withdraw else ():
                s.delete(r)
            s.flush()
            return {
                "revised": revised,
                "missing": [i for i in ids if i not in revised],
                "withdrawn": withdraw,
                "dataset_version": version,
                "rows_left_out": left_out,
            }

    def _check(
        self, s: Session, rows: list[Feedback], label: str | None, value: float | None
    ) -> None:
        """Check the new answer against each row's prediction, and write it."""
        preds = repo.predictions_by_id(s, {r.prediction_id for r in rows})
        ranges: dict[int, ValueRange] = {}
        if self.ctx.task.is_regression:
            z = self.ctx.settings.max_value_z
            stats = repo.target_stats(s, {p.model_version for p in preds.values()})
            ranges = {v: ValueRange(mean, std, z) for v, (mean, std) in stats.items()}
        for r in rows:
            pred = preds.get(r.prediction_id)
            it = FeedbackIn(r.prediction_id, label, None, value, r.user_id)
            checked = check_feedback(
                pred, it, None if pred is None else ranges.get(pred.model_version)
            )
            r.label, r.value, r.correct = label, value, checked.agreed
            # What a retry of the request that now stands would send (its user a pseudonym).
            r.body_sha256 = fingerprint(it)

    def _leave_out(
        self, s: Session, feedback_ids: list[str], withdraw: bool
    ) -> tuple[int | None, int]:
        """Unlink the rows curated from these answers and leave them out of a new dataset
        version (when the newest holds any): (that version, rows left out)."""
        used = list(s.scalars(select(Example).where(Example.feedback_id.in_(feedback_ids))))
        if not used:
            return None, 0
        for e in used:
            e.feedback_id = None
        s.flush()
        dv = data_repo.latest(s)
        if dv is None:
            raise ProjectError(
                "the project has no dataset version", path=self.ctx.settings.project_dir
            )
        gone = {e.id for e in used}
        examples = data_repo.examples(s, dv.id)
        kept = [e for e in examples if e.id not in gone]
        if len(kept) == len(examples):
            return None, 0
        nv = data_repo.new_version(
            s,
            kept,
            task=self.ctx.task.name,
            parent=dv.id,
            source=REVISED,
            preprocessing=dict(dv.preprocessing),
            labels=list(dv.stats.get("labels", [])),
            extra={
                "revision": {
                    "answers": len(feedback_ids),
                    "rows_left_out": len(examples) - len(kept),
                    "why": "withdrawn" if withdraw else "changed",
                }
            },
        )
        return nv.id, len(examples) - len(kept)
