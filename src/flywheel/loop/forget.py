"""Forget a user (right to erasure), and every model version trained on their rows.

The steps, in order: the erasure, in one transaction (their rows, the dataset versions
that held them marked, a new dataset version without them, the affected versions
withdrawn and their aliases moved, the audit record); their inputs out of the blob
folder; the withdrawn production scored on the held-out rows that remain, while its
weights still exist; the affected weights deleted; the audit record completed; the
served model refreshed; and, when production was affected, a retrain from scratch.
"""

from __future__ import annotations

import time
from typing import Any

from flywheel.data import HOLDOUT
from flywheel.errors import FlywheelError, InputError
from flywheel.loop.services import Services
from flywheel.loop.train import ProgressFn, train
from flywheel.privacy.service import Erased
from flywheel.training import train_config

__all__ = ["forget", "retrain_after_forget"]


def forget(
    sv: Services, user_id: str, *, retrain: bool = True, on_epoch: ProgressFn | None = None
) -> dict[str, Any]:
    """Erase a user and take every model trained on their rows out of service; with
    ``retrain``, train production again without them. Returns the audit record."""
    started = time.perf_counter()
    erased = sv.privacy.erase(user_id)
    # Committed: now the bytes. Inputs another user also sent stay (their copy).
    deleted = sv.privacy.delete_inputs(erased)
    before = _withdrawn_score(sv, erased)
    sv.registry.delete_weights(erased.affected)
    after = sv.privacy.counts_after(erased.pseudonym)
    needs_retrain = erased.production_before in erased.affected
    sv.privacy.add_to_audit(
        erased.audit_id,
        lambda detail: {
            **detail,
            **deleted,
            **after,
            "needs_retrain": needs_retrain,
            "withdrawn_production_score": before,
            "retrain": None,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    sv.registry.cache.refresh()
    if retrain and needs_retrain:
        return retrain_after_forget(sv, erased.audit_id, on_epoch=on_epoch)
    return sv.privacy.audit_entry(erased.audit_id)


def retrain_after_forget(
    sv: Services, audit_id: int, *, on_epoch: ProgressFn | None = None
) -> dict[str, Any]:
    """Train production again, from scratch, on the rows a forget left; it goes through
    the gate against the fallback (if any). Recorded on the audit entry."""
    entry = sv.privacy.audit_entry(audit_id)
    if entry["action"] != "forget":
        raise InputError(f"audit record {audit_id} is a {entry['action']}, not a forget")
    started = time.perf_counter()
    t = train(
        sv,
        train_config(sv.ctx.settings, warm_start=False),
        on_epoch=on_epoch,
        reason=f"forget (audit #{audit_id}): production v{entry['production_before']} "
        "was withdrawn",
    )
    production = sv.registry.production()
    metric = t.decision.metric

    def record(detail: dict[str, Any]) -> dict[str, Any]:
        old = detail.get("withdrawn_production_score") or {}
        return {
            **detail,
            "retrain": {
                "version": t.model.version,
                "promoted": t.promoted,
                "gate": t.decision.reason,
                metric: t.decision.challenger_score,
                # the same held-out rows: what forgetting cost (or gained)
                f"{metric}_change_vs_withdrawn": None
                if metric not in old
                else round(t.decision.challenger_score - old[metric], 4),
                "dataset_version": t.model.dataset_version,
                "seconds": round(time.perf_counter() - started, 3),
            },
            "production_after": production,
            "seconds": round(detail.get("seconds", 0) + time.perf_counter() - started, 3),
        }

    sv.privacy.add_to_audit(audit_id, record)
    sv.registry.cache.refresh()
    return sv.privacy.audit_entry(audit_id)


def _withdrawn_score(sv: Services, erased: Erased) -> dict[str, Any] | None:
    """What the withdrawn production scores on the held-out rows that remain (the
    retrain's gate is measured against it too); None when production was not affected."""
    production, version = erased.production_before, erased.dataset_version_new
    if production is None or production not in erased.affected or version is None:
        return None
    try:
        old = sv.registry.load(production)
    except FlywheelError:
        return None
    rows = sv.data.rows(version, HOLDOUT)
    if not rows:
        return None
    report, _ = old.score(sv.data.arrays(rows, old.spec))
    metric = "mse" if sv.ctx.task.is_regression else "accuracy"
    return {"version": production, metric: report[metric], "n": len(rows)}
