"""Privacy's service: admission to a private run (the ledger), the erasure of a user,
retention, the blobs they leave behind, and the audit log. Each public method commits
what it writes to the store in one transaction (blobs and spill files after it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flywheel.context import Context
from flywheel.data import WeightedRow
from flywheel.data import repo as data_repo
from flywheel.errors import InputError, NotFoundError, ProjectError
from flywheel.events import repo as events
from flywheel.privacy import forget as forget_rows
from flywheel.privacy import ledger
from flywheel.privacy.identity import IdentityService
from flywheel.privacy.pseudonym import find_user
from flywheel.registry import PRODUCTION
from flywheel.registry import repo as registry_repo
from flywheel.store import journal, lock_training_rows
from flywheel.store.schema import AuditRecord, Example, Prediction, utcnow
from flywheel.training import TrainConfig, sampling_units
from flywheel.training.dp import plan

__all__ = ["Erased", "PrivacyService"]

log = logging.getLogger("flywheel")


@dataclass(frozen=True)
class Erased:
    """What the erasure transaction of a forget did; its audit record holds the rest."""

    audit_id: int
    pseudonym: str
    production_before: int | None
    affected: list[int]
    input_hashes: set[str]
    derived: set[str]
    dataset_version_new: int | None


class PrivacyService:
    def __init__(self, ctx: Context, identity: IdentityService) -> None:
        self.ctx = ctx
        self.identity = identity

    # -- the ledger ------------------------------------------------------------------

    def admit(
        self, weighted: list[WeightedRow], config: TrainConfig
    ) -> tuple[list[WeightedRow], dict[str, Any]]:
        """Leave out the rows of users whose budget this private run would exceed."""
        budget = self.ctx.settings.dp_user_budget
        run_eps = config.dp_epsilon
        if config.dp_noise_multiplier is not None:  # ε follows from σ: estimate it
            units = len(set(sampling_units(weighted).tolist()))
            run_eps = plan(
                users=max(1, round(units * (1 - config.val_fraction))),
                batch_size=config.batch_size,
                epochs=config.epochs,
                delta=config.dp_delta,
                noise_multiplier=config.dp_noise_multiplier,
            )[3]
        users = [u for *_, u in weighted]
        with self.ctx.db.session() as s:
            already = ledger.spent(s, {u for u in users if u})
        keep, refused = ledger.admit(users, already, float(run_eps or 0.0), budget)
        kept = [row for row, k in zip(weighted, keep, strict=True) if k]
        info: dict[str, Any] = {
            "budget": budget,
            "users_left_out": len(refused),
            "rows_left_out": len(weighted) - len(kept),
        }
        if refused:
            log.warning(
                "privacy budget: %d user(s) left out of this run (%d rows): their ε spent "
                "plus this run's %.3g would exceed the budget %.3g",
                len(refused),
                info["rows_left_out"],
                run_eps,
                budget,
            )
            info["left_out"] = refused
        return kept, info

    def ledger(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Each user's cumulative ε and δ across private runs (or one user's)."""
        self.ctx.settle()  # a user whose first prediction is still in the server's log
        with self.ctx.db.session() as s:
            pid = None if user_id is None else find_user(s, user_id, self.identity.chain).id
            rows = ledger.summary(s, pid)
        budget = self.ctx.settings.dp_user_budget
        for r in rows:
            r["budget"] = budget
            r["remaining"] = max(0.0, budget - r["epsilon"])
        if user_id is not None and not rows:
            return [
                {
                    "user_id": pid,
                    "epsilon": 0.0,
                    "delta": 0.0,
                    "runs": [],
                    "budget": budget,
                    "remaining": budget,
                }
            ]
        return rows

    # -- the audit log ---------------------------------------------------------------

    def audit_log(self, action: str | None = None) -> list[dict[str, Any]]:
        with self.ctx.db.session() as s:
            q = select(AuditRecord).order_by(AuditRecord.id)
            if action is not None:
                q = q.where(AuditRecord.action == action)
            return [
                {
                    "id": r.id,
                    "action": r.action,
                    "subject": r.subject,
                    "detail": r.detail,
                    "created_at": r.created_at.isoformat(),
                }
                for r in s.scalars(q)
            ]

    def audit_entry(self, audit_id: int) -> dict[str, Any]:
        with self.ctx.db.session() as s:
            rec = s.get(AuditRecord, audit_id)
            if rec is None:
                raise NotFoundError("audit record", audit_id)
            return {
                "audit_id": rec.id,
                "action": rec.action,
                "subject": rec.subject,
                "created_at": rec.created_at.isoformat(),
                **rec.detail,
            }

    def add_to_audit(
        self, audit_id: int, update: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Replace an audit record's detail with ``update(detail)``, in one transaction
        (``update`` may read the store through the detail it is given)."""
        with self.ctx.db.session() as s:
            rec = s.get(AuditRecord, audit_id)
            if rec is None:
                raise NotFoundError("audit record", audit_id)
            rec.detail = update(dict(rec.detail))

    # -- forgetting ------------------------------------------------------------------

    def erase(self, user_id: str) -> Erased:
        """The erasure of a user, in one transaction: their rows deleted, the dataset
        versions that held them marked, a new dataset version without them, every model
        version trained on them withdrawn (aliases moved off), and the audit record."""
        self.ctx.settle()
        # Opened (or created) before the lock: opening the chain may write through a
        # session of its own, which SQLite would make wait on this one's write lock.
        chain = self.identity.chain
        with self.ctx.db.session() as s:
            # After any curation, trust update or registration that read their rows: the
            # newest version read here stays the newest, and every model version on them
            # is on record (affected_versions sees it).
            lock_training_rows(s)
            pid = find_user(s, user_id, chain).id
            production = registry_repo.get_alias(s, PRODUCTION)
            latest = data_repo.latest(s)
            if latest is None:
                raise ProjectError(
                    "the project has no dataset version", path=self.ctx.settings.project_dir
                )
            totals_before = forget_rows.totals(s)
            er = forget_rows.erase(s, pid)
            new_dv = None
            if latest.id in er.dataset_versions:  # later versions exclude the erased rows
                stats = latest.stats
                new_dv = data_repo.new_version(
                    s,
                    data_repo.examples(s, latest.id),
                    task=self.ctx.task.name,
                    parent=latest.id,
                    source=latest.source,
                    preprocessing=dict(latest.preprocessing),
                    labels=list(stats["labels"]),
                    extra={
                        "erased_from": latest.id,
                        "erased_rows": er.dataset_versions[latest.id],
                        **{k: stats[k] for k in ("label_issues",) if k in stats},
                    },
                )
            now = utcnow()
            why = f"trained on rows of a user forgotten at {now.isoformat(timespec='seconds')}"
            moved = registry_repo.withdraw(s, er.affected, reason=why, at=now)
            detail: dict[str, Any] = {
                "counts_before": er.counts_before,
                "erased": {
                    "predictions": er.predictions,
                    "feedback": er.feedback,
                    "examples": er.examples,
                    "review_items": er.review_items,
                    "ledger_rows": er.ledger_rows,
                    "explanations": er.explanations,
                    "inputs": len(er.input_hashes),
                },
                "inputs_digest": er.inputs_digest,
                "table_rows_before": totals_before,
                "dataset_versions_marked": sorted(er.dataset_versions),
                "dataset_version_new": None if new_dv is None else new_dv.id,
                "versions_affected": er.affected,
                "aliases_moved": moved,
                "production_before": production,
            }
            record = forget_rows.audit(s, er, detail)
            events.record(
                s, self.ctx.settings.webhooks, "user.forgotten",
                {"audit_id": record.id, "subject": record.subject,
                 "versions_affected": sorted(er.affected), "production_before": production},
            )  # fmt: skip
            return Erased(
                audit_id=record.id,
                pseudonym=pid,
                production_before=production,
                affected=er.affected,
                input_hashes=er.input_hashes,
                derived=er.derived,
                dataset_version_new=None if new_dv is None else new_dv.id,
            )

    def delete_inputs(self, erased: Erased) -> dict[str, int]:
        """After the erasure committed: the user's inputs leave the blob folder unless
        another user sent the same bytes; their explanation overlays and spilled log
        rows go too."""
        with self.ctx.db.session() as s:
            shared = forget_rows.still_referenced(s, erased.input_hashes)
        deleted = self.delete_unreferenced(erased.input_hashes - shared)
        for h in sorted(erased.derived):  # their explanation overlays
            self.ctx.blobs.delete(h)
        return {
            "blobs_deleted": deleted,
            "inputs_kept_shared": len(shared),
            "spill_rows_deleted": self.scrub_spill(erased.pseudonym),
        }

    def counts_after(self, pseudonym: str) -> dict[str, Any]:
        """What the store holds of a forgotten user (nothing, or the forget failed)."""
        with self.ctx.db.session() as s:
            return {
                "counts_after": forget_rows.table_counts(s, pseudonym),
                "table_rows_after": forget_rows.totals(s),
                "production_after": registry_repo.get_alias(s, PRODUCTION),
            }

    def delete_unreferenced(
        self,
        digests: set[str],
        needed: Callable[[Session, set[str]], set[str]] = forget_rows.still_referenced,
    ) -> int:
        """Delete blobs no row needs; one that a row came to need meanwhile (a request
        with the same bytes, logged between the check and the delete) is put back from
        the bytes read before deleting. Returns how many stay deleted."""
        blobs = self.ctx.blobs
        held: dict[str, bytes] = {}
        for h in sorted(digests):
            try:
                held[h] = blobs.get(h)
            except NotFoundError:
                continue
            blobs.delete(h)
        self.ctx.settle()
        with self.ctx.db.session() as s:
            revived = needed(s, set(held))
        for h in revived:
            blobs.put(held[h])
        return len(held) - len(revived)

    def scrub_spill(self, pseudonym: str) -> int:
        """Drop the user's rows from the prediction log's journal (rows a killed server
        or a refused shutdown left for replay) and from ``spill/*.jsonl`` (where earlier
        versions kept the latter): a forget covers them too."""
        removed = journal.scrub(self.ctx.settings.project_dir / "journal", pseudonym)
        for path in sorted((self.ctx.settings.project_dir / "spill").glob("*.jsonl")):
            lines = path.read_text().splitlines(keepends=True)
            kept = [ln for ln in lines if pseudonym not in ln]
            if len(kept) != len(lines):
                removed += len(lines) - len(kept)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(kept))
                os.replace(tmp, path)
        return removed

    # -- retention -------------------------------------------------------------------

    def apply_retention(self, days: float | None = None) -> dict[str, Any]:
        """Delete stored inputs of predictions older than ``days`` (default: the
        ``retention_days`` setting). Inputs that training rows use, or that a newer
        prediction also sent, are kept; the prediction rows stay (without their input,
        their feedback can no longer become training rows). Audited."""
        days = self.ctx.settings.retention_days if days is None else days
        if days is None:
            raise InputError("no retention age: pass --days or set retention_days")
        self.ctx.settle()
        cutoff = utcnow() - timedelta(days=days)
        with self.ctx.db.session() as s:
            old = set(
                s.scalars(
                    select(Prediction.input_hash).where(Prediction.created_at < cutoff).distinct()
                )
            )
            n_old = int(s.scalar(select(func.count()).where(Prediction.created_at < cutoff)) or 0)
            training = set(s.scalars(select(Example.input_hash).where(Example.input_hash.in_(old))))
            recent = _recent(s, old, cutoff)

        def needed(s: Session, hashes: set[str]) -> set[str]:
            keep = set(s.scalars(select(Example.input_hash).where(Example.input_hash.in_(hashes))))
            return keep | _recent(s, hashes, cutoff)

        deleted = self.delete_unreferenced(old - training - recent, needed)
        detail = {
            "days": days,
            "cutoff": cutoff.isoformat(timespec="seconds"),
            "predictions": n_old,
            "inputs_deleted": deleted,
            "kept_for_training": len(old & training),
            "kept_recent": len(old & recent - training),
        }
        if deleted:
            with self.ctx.db.session() as s:
                s.add(AuditRecord(action="retention", subject=None, detail=detail))
        return detail


def _recent(s: Session, hashes: set[str], cutoff: Any) -> set[str]:
    """Of ``hashes``, those a prediction made at or after ``cutoff`` sent."""
    return set(
        s.scalars(
            select(Prediction.input_hash).where(
                Prediction.created_at >= cutoff, Prediction.input_hash.in_(hashes)
            )
        )
    )
