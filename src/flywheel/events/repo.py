"""Webhook deliveries in the caller's transaction: recorded with what caused them,
claimed by one sender at a time, marked delivered or retried later."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from flywheel.events.hooks import Webhook
from flywheel.store.schema import WebhookDelivery, utcnow

__all__ = ["claim_due", "finish", "recent", "record"]

#: attempts before a delivery is given up on; waits between them double from 2 s
MAX_ATTEMPTS = 8


def record(s: Session, hooks: Sequence[Webhook], event: str, data: dict[str, Any]) -> list[str]:
    """One pending delivery per hook that wants ``event``, in the transaction of what
    caused it (committed with it, or not at all)."""
    now = utcnow()
    ids = []
    for hook in hooks:
        if not hook.wants(event):
            continue
        did = str(uuid.uuid4())
        payload = {"event": event, "id": did, "at": now.isoformat(), "data": data}
        s.add(
            WebhookDelivery(
                id=did, event=event, url=hook.url, payload=payload, status="pending",
                attempts=0, next_at=now, created_at=now,
            )
        )  # fmt: skip
        ids.append(did)
    return ids


def claim_due(s: Session, hold_s: float, limit: int = 50) -> list[WebhookDelivery]:
    """Pending deliveries due now that no other sender holds, claimed for ``hold_s``."""
    now = utcnow()
    due = s.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_at <= now,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        .order_by(WebhookDelivery.created_at)
        .limit(limit)
    ).all()
    claimed = []
    for did in due:
        r = s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == did,
                WebhookDelivery.status == "pending",
                or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
            )
            .values(claimed_until=now + timedelta(seconds=hold_s))
        )
        if r.rowcount:  # type: ignore[attr-defined]
            row = s.get(WebhookDelivery, did)
            assert row is not None
            claimed.append(row)
    return claimed


def finish(
    s: Session,
    did: str,
    *,
    status_code: int | None,
    error: str | None,
    permanent: bool = False,
) -> str:
    """Record an attempt: delivered on a 2xx, else retried with a doubling wait, or
    failed after ``MAX_ATTEMPTS`` (or at once when ``permanent``). The new status."""
    row = s.get(WebhookDelivery, did)
    assert row is not None
    now = utcnow()
    row.attempts += 1
    row.last_status, row.last_error, row.claimed_until = status_code, error, None
    if error is None and status_code is not None and 200 <= status_code < 300:
        row.status, row.delivered_at = "delivered", now
    elif permanent or row.attempts >= MAX_ATTEMPTS:
        row.status = "failed"
    else:
        row.next_at = now + timedelta(seconds=min(2.0**row.attempts, 3600.0))
    return row.status


def recent(s: Session, limit: int) -> list[dict[str, Any]]:
    rows = s.scalars(
        select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(limit)
    ).all()
    return [
        {
            "id": r.id,
            "event": r.event,
            "url": r.url,
            "status": r.status,
            "attempts": r.attempts,
            "last_status": r.last_status,
            "last_error": r.last_error,
            "created_at": _iso(r.created_at),
            "next_at": _iso(r.next_at),
            "delivered_at": _iso(r.delivered_at),
        }
        for r in rows
    ]


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()
