"""The events' service: record an event for every hook that wants it (one transaction,
or inside the caller's), and deliver what is due through a sender the shell gives
(the service itself makes no network call)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from flywheel.context import Context
from flywheel.events import repo
from flywheel.events.hooks import check_url, sign
from flywheel.store import retry_locked

__all__ = ["EventService", "Send"]

log = logging.getLogger("flywheel.events")

#: (url, body, headers) -> the HTTP status; raises OSError-like errors when unreachable
Send = Callable[[str, bytes, dict[str, str]], int]


def _resolve(url: str) -> list[str]:
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


class EventService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def record(self, s: Session, event: str, data: dict[str, Any]) -> list[str]:
        """In the caller's transaction (the event commits with what caused it)."""
        return repo.record(s, self.ctx.settings.webhooks, event, data)

    def emit(self, event: str, data: dict[str, Any]) -> list[str]:
        """In a transaction of its own (after what caused it was committed)."""
        if not self.ctx.settings.webhooks:
            return []

        def write() -> list[str]:
            with self.ctx.db.session() as s:
                return repo.record(s, self.ctx.settings.webhooks, event, data)

        return retry_locked(write)

    def deliveries(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.ctx.db.session() as s:
            return repo.recent(s, limit)

    def deliver_due(self, send: Send, *, hold_s: float = 60.0) -> int:
        """Send the deliveries that are due (each claimed first, so that no two senders
        send it at once); how many were attempted. Each attempt is logged and kept."""
        st = self.ctx.settings
        secrets = {h.url: h.secret for h in st.webhooks}
        with self.ctx.db.session() as s:
            due = [(d.id, d.url, d.event, d.payload) for d in repo.claim_due(s, hold_s)]
        for did, url, event, payload in due:
            secret = secrets.get(url)
            status_code: int | None = None
            error: str | None = None
            permanent = False
            refused = check_url(url, _resolve(url), st.webhook_allow_private)
            if secret is None:
                error, permanent = "the webhook is no longer configured", True
            elif refused is not None:
                error, permanent = f"refused: {refused}", True
            else:
                body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
                ts = int(time.time())
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "flywheel-webhooks",
                    "X-Flywheel-Event": event,
                    "X-Flywheel-Delivery": did,
                    "X-Flywheel-Timestamp": str(ts),
                    "X-Flywheel-Signature": sign(secret, ts, body),
                }
                try:
                    status_code = send(url, body, headers)
                    if not 200 <= status_code < 300:
                        error = f"HTTP {status_code}"
                except Exception as exc:  # unreachable, timed out, TLS: try again later
                    error = f"{type(exc).__name__}: {exc}"[:500]
            with self.ctx.db.session() as s:
                outcome = repo.finish(
                    s, did, status_code=status_code, error=error, permanent=permanent
                )
            level = logging.INFO if outcome == "delivered" else logging.WARNING
            log.log(level, "webhook %s %s to %s: %s", event, did, url, outcome + (
                f" ({error})" if error else ""))  # fmt: skip
        return len(due)
