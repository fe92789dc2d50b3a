"""Feedback's service: storing answers (committed before they are acknowledged), reading
them back weighted by trust, and curating them into a new dataset version."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError

from flywheel.context import Context
from flywheel.data import EVALUATION, HOLDOUT, TRAIN, DatasetInfo, evaluation_draw
from flywheel.data import repo as data_repo
from flywheel.errors import FlywheelError, InputError, ProjectError
from flywheel.feedback import repo
from flywheel.feedback.curation import Answer, CuratedRow, curate
from flywheel.feedback.records import (
    FeedbackIn,
    FeedbackResult,
    KeyedAnswers,
    ValueRange,
    check_feedback,
    contribution,
    fingerprint,
)
from flywheel.feedback.trust import PRIOR_TRUST, UserTrust, answer_weight
from flywheel.privacy.identity import IdentityService
from flywheel.store import lock_training_rows, retry_locked
from flywheel.store.schema import Example, utcnow

__all__ = ["FeedbackService"]

T = TypeVar("T")


class FeedbackService:
    def __init__(self, ctx: Context, identity: IdentityService) -> None:
        self.ctx = ctx
        self.identity = identity

    def record_many(self, items: Sequence[FeedbackIn]) -> list[FeedbackResult | FlywheelError]:
        """Store many answers in one transaction (the server's group commit).

        Each answer is checked on its own: a bad one gets its error and adds nothing,
        the others are committed together, and none is reported stored before that
        commit. An answer with an ``external_id`` (an ``Idempotency-Key``) already
        stored, by an earlier batch or earlier in this one, is answered with the stored
        answer (``replayed``) if it asks the same, refused (``ConflictError``) if not.
        """
        out: list[FeedbackResult | FlywheelError | None] = [None] * len(items)
        checked: list[tuple[int, FeedbackIn, str]] = []
        for i, it in enumerate(items):
            try:
                user_id = self.identity.pseudonym(it.user_id)
                if it.label is None and it.correct is None and it.value is None:
                    raise InputError("feedback needs a 'label', a 'value' or 'correct'")
                it = replace(it, user_id=user_id)
                checked.append((i, it, "" if it.external_id is None else fingerprint(it)))
            except FlywheelError as exc:
                out[i] = exc
        # A prediction may still be in the server's log queue: wait for its commit.
        for _, it, _ in checked:
            self.ctx.wait_written(it.prediction_id)

        def write(look: bool) -> dict[int, FeedbackResult | FlywheelError]:
            done: dict[int, FeedbackResult | FlywheelError] = {}
            ids = {it.prediction_id for _, it, _ in checked}
            with self.ctx.db.session() as s:
                # One query per kind for the whole batch, one multi-row INSERT.
                preds = repo.predictions_by_id(s, ids)
                queued = repo.queued(s, ids)
                ranges = self._value_ranges(s, preds.values())
                keys = {it.external_id for _, it, _ in checked if it.external_id is not None}
                keyed = KeyedAnswers(repo.feedback_by_external_id(s, keys) if look else ())
                rows: list[dict[str, Any]] = []
                for i, it, digest in checked:
                    if (before := keyed.replay(it, digest)) is not None:
                        done[i] = before
                        continue
                    pred = preds.get(it.prediction_id)
                    if pred is not None and it.only_own and pred.user_id != it.user_id:
                        pred = None  # someone else's: as if unknown
                    try:
                        result = check_feedback(
                            pred, it, None if pred is None else ranges.get(pred.model_version)
                        )
                    except FlywheelError as exc:
                        done[i] = exc
                        continue
                    done[i] = result
                    keyed.add(it, digest, result)
                    rows.append(
                        {
                            "id": result.feedback_id,
                            "prediction_id": it.prediction_id,
                            "user_id": it.user_id,
                            "label": it.label,
                            "value": it.value,
                            "correct": result.agreed,
                            "via_queue": it.prediction_id in queued,
                            "external_id": it.external_id,
                            "body_sha256": digest or None,
                            "created_at": utcnow(),
                        }
                    )
                repo.insert_feedback(s, rows)
            return done

        if checked:
            for i, result in _commit_keyed(write, any(d for *_, d in checked)).items():
                out[i] = result
        return [r for r in out if r is not None]

    def _value_ranges(self, s: Any, preds: Any) -> dict[int, ValueRange]:
        """The range of true values each regression version's feedback may give."""
        if not self.ctx.task.is_regression:
            return {}
        z = self.ctx.settings.max_value_z
        stats = repo.target_stats(s, {p.model_version for p in preds})
        return {v: ValueRange(mean, std, z) for v, (mean, std) in stats.items()}

    def answers(
        self, *, naive: bool = False, include_used: bool = False, until: datetime | None = None
    ) -> tuple[list[Answer], int]:
        """Usable answers from feedback not yet turned into an example, weighted by trust
        (``include_used``: every answer; ``until``: only those given by then).

        Returns the answers and how many were held back because their user is quarantined.
        """
        with self.ctx.db.session() as s:
            rows = repo.answer_rows(s, include_used=include_used, until=until)
        return self._weigh(rows, naive)

    def _weigh(self, rows: Sequence[Any], naive: bool) -> tuple[list[Answer], int]:
        regression = self.ctx.task.is_regression
        out: list[Answer] = []
        held_back = 0
        for fb, input_hash, predicted, predicted_value, trust, detail, quarantined in rows:
            if not self.ctx.blobs.exists(input_hash):  # its input expired (retention)
                continue
            if quarantined is not None and not naive:
                held_back += 1
                continue
            if regression:
                value = (
                    fb.value if fb.value is not None else (predicted_value if fb.correct else None)
                )
                weight = 1.0 if naive else PRIOR_TRUST if trust is None else float(trust)
                if value is not None:
                    out.append(
                        Answer(
                            fb.id, input_hash, None, fb.user_id, fb.created_at, float(value), weight
                        )
                    )
                continue
            label = fb.label if fb.label is not None else (predicted if fb.correct else None)
            if label is None:
                continue
            if naive:
                weight = 1.0
            else:
                # How far this user's word is to be trusted *for this label*: a targeted
                # liar is right most of the time, but not when saying it.
                known = None if trust is None else _stored_trust(float(trust), detail)
                weight = float(answer_weight(known, label, PRIOR_TRUST))
            out.append(Answer(fb.id, input_hash, label, fb.user_id, fb.created_at, weight=weight))
        return out, held_back

    def curate(self, *, naive: bool) -> tuple[DatasetInfo | None, dict[str, Any]]:
        """Make a new dataset version from the feedback not yet used; None when there is
        none. Quarantined users' answers are held back (and counted); conflicting
        answers are settled by a trust-weighted vote; unless ``naive``, no user gives
        more than ``max_user_share`` of the new rows; each row carries its user's trust
        as its training weight. One transaction."""
        regression = self.ctx.task.is_regression
        with self.ctx.db.session() as s:
            lock_training_rows(s)  # a forget erases none of what is read here meanwhile
            dv = data_repo.latest(s)
            if dv is None:
                raise ProjectError(
                    "the project has no dataset version", path=self.ctx.settings.project_dir
                )
            labels = list(dv.stats["labels"])
            answers, held_back = self._weigh(repo.answer_rows(s), naive)
            answers = [a for a in answers if regression or a.label in labels]
            out_of_range = 0
            if regression:  # a value stored before it was checked, or far out: not trained on
                kept = [a for a in answers if _in_range(a.value, dv.preprocessing, self.ctx)]
                out_of_range, answers = len(answers) - len(kept), kept
            judged = data_repo.rows(s, dv.id, HOLDOUT) + data_repo.rows(s, dv.id, EVALUATION)
            known = data_repo.rows(s, dv.id, TRAIN)
            cap = None if naive else self.ctx.settings.max_user_share
            c = curate(answers, {h for h, *_ in judged}, {h for h, *_ in known}, max_user_share=cap)
            evaluation, dropped = self._evaluation_draw(s, dv.id, c.rows, naive=naive)
            c.rows = [r for r in c.rows if r.input_hash not in dropped]
            summary: dict[str, Any] = {
                "answers": c.answers,
                "rows": len(c.rows),
                "evaluation_rows": len(evaluation),
                "dropped_holdout": c.dropped_holdout,
                "dropped_near_evaluation": len(dropped),
                "dropped_known": c.dropped_known,
                "merged_duplicates": c.merged_duplicates,
                "quarantined": held_back,
                "capped": c.capped,
            }
            if regression:
                summary["out_of_range"] = out_of_range
            if not c.rows:
                return None, summary
            users = [r.user_id for r in c.rows]
            who = contribution(
                users,
                repo.first_seen(s, {u for u in users if u is not None}),
                dv.created_at,
                first_feedback=int(dv.stats.get("n_feedback", 0)) == 0,
            )
            new = [
                Example(
                    input_hash=r.input_hash,
                    label=r.label,
                    value=r.value,
                    split=EVALUATION if r.input_hash in evaluation else TRAIN,
                    origin="feedback",
                    feedback_id=r.feedback_id,
                    user_id=r.user_id,
                    weight=r.weight,
                )
                for r in c.rows
            ]
            s.add_all(new)
            s.flush()
            nv = data_repo.new_version(
                s,
                data_repo.examples(s, dv.id) + new,
                task=self.ctx.task.name,
                parent=dv.id,
                source="feedback",
                preprocessing=dict(dv.preprocessing),
                labels=labels,
                extra={"curation": summary, "contribution": who},
            )
            return data_repo.info(nv, self.ctx.task.name), summary

    def _evaluation_draw(
        self, s: Any, version: int, rows: Sequence[CuratedRow], *, naive: bool
    ) -> tuple[set[str], set[str]]:
        """(the new rows that go to the evaluation split, those dropped as near-copies of
        an evaluation or held-out row). Naive curation has no trust to go by: none."""
        st = self.ctx.settings
        if naive or st.eval_share == 0 or not rows:
            return set(), set()
        regression = self.ctx.task.is_regression
        placed = data_repo.split_rows(s, version)
        keys = self._near_keys({r.input_hash for r in rows} | {h for h, *_ in placed})
        sides = {
            keys[h]: (TRAIN if sp == TRAIN else EVALUATION) for h, sp, *_ in placed if h in keys
        }
        counts: dict[str, tuple[int, int]] = {}
        for _, sp, label, origin in placed:
            if origin == "feedback":
                n, e = counts.get("" if regression else str(label), (0, 0))
                counts["" if regression else str(label)] = (n + 1, e + (sp == EVALUATION))
        new = [
            (
                r.input_hash,
                "" if regression else str(r.label),
                keys.get(r.input_hash),
                regression or r.weight >= st.eval_min_trust,
            )
            for r in rows
        ]
        return evaluation_draw(new, sides, counts, st.eval_share, st.seed)

    def _near_keys(self, hashes: set[str]) -> dict[str, str]:
        """Input hash → its near-duplicate key (a perceptual hash for images); empty for
        modalities without one."""
        codec, out = self.ctx.codec, {}
        for digest in sorted(hashes):
            try:
                content = self.ctx.blobs.get(digest)
                key = codec.fingerprint(content, codec.probe(content))
            except (FlywheelError, OSError):
                continue  # expired or unreadable: no key, drawn on its own
            if key is None:
                return {}
            out[digest] = key
        return out


def _commit_keyed(work: Callable[[bool], T], keyed: bool, attempts: int = 4) -> T:
    """Run a batch's write (``work(look)``: ``look`` up the batch's keys in the store).

    A key is new in the common case: the first try does not look keys up (a query per
    batch saved) but lets the unique index refuse one stored before, by an earlier
    request or by another worker (process, server) meanwhile. The batch is then written
    again, looking its keys up, and the stored answers are replayed; again if yet another
    worker stored one between that look-up and the INSERT.
    """
    look = False
    for attempt in range(1, attempts + 1):
        try:
            return retry_locked(functools.partial(work, look))
        except IntegrityError:
            if not keyed or attempt == attempts:
                raise
            look = True
    raise AssertionError("unreachable")


def _in_range(value: float | None, preprocessing: dict[str, Any], ctx: Context) -> bool:
    """A regression answer's value is finite and within ``max_value_z`` of the dataset's
    training targets."""
    if value is None or not math.isfinite(value):
        return False
    mean, std = preprocessing.get("target_mean"), preprocessing.get("target_std")
    if mean is None or std is None:
        return True
    return abs(value - float(mean)) <= ctx.settings.max_value_z * float(std)


def _stored_trust(trust: float, detail: dict[str, Any] | None) -> UserTrust:
    """A user's stored trust (the column, six places) with the per-label trust of its
    detail, as ``answer_weight`` reads it."""
    label_trust = dict((detail or {}).get("label_trust", {}))
    return UserTrust(
        user_id="",
        trust=trust,
        votes=0,
        golden_seen=0,
        golden_correct=0,
        agreed_with_others=0,
        compared_with_others=0,
        agreed_with_model=0,
        compared_with_model=0,
        label_trust=label_trust,
    )
