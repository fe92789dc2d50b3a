"""The façade's verbs of running a service: API keys and dashboard sessions, the jobs'
queue, leases across processes, webhook deliveries. ``Project`` has them; shells use
them through it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flywheel.events.service import Send
from flywheel.jobs.repo import Recovered
from flywheel.jobs.service import Claim, process_owner
from flywheel.loop.services import Services

__all__ = ["Operations"]


class Operations:
    #: the stage services (set by ``Project``)
    services: Services

    # -- API keys, dashboard sessions and jobs --------------------------------------------

    def create_key(
        self, scopes: list[str], name: str = "", *, expires_in: timedelta | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A new API key, returned once (only its hash is kept); ``expires_in``: its life."""
        return self.services.keys.create(scopes, name, expires_in)

    def revoke_key(self, ident: str) -> dict[str, Any]:
        """Revoke a key named by its id, prefix or name; its dashboard sessions end."""
        return self.services.keys.revoke(ident)

    def list_keys(self) -> list[dict[str, Any]]:
        return self.services.keys.list_keys()

    def has_keys(self) -> bool:
        return self.services.keys.has_keys()

    def authenticate(self, key: str, scope: str | None) -> tuple[str, list[str]]:
        """The name and scopes of ``key``; ``AuthError`` unless live with ``scope`` (None: any)."""
        return self.services.keys.authenticate(key, scope)

    def open_ui_session(self, key: str) -> tuple[str, str, list[str]]:
        """Sign in to the dashboard: (cookie token, CSRF token, the key's scopes)."""
        return self.services.keys.open_session(key)

    def ui_session(self, token: str) -> dict[str, Any] | None:
        return self.services.keys.session(token)

    def end_ui_session(self, token: str) -> None:
        self.services.keys.end_session(token)

    def create_job(
        self,
        kind: str,
        params: dict[str, Any] | None = None,
        *,
        trigger: str = "manual",
        owner: str | None = None,
    ) -> str:
        """Queue a job (``kind`` and ``params`` describe its work whole); a retrain joins
        the one waiting with the same options, and is refused while one with others waits."""
        return self.services.jobs.create(kind, params, trigger=trigger, owner=owner)

    def claim_job(self, owner: str, job_id: str | None = None) -> Claim | None:
        """Claim the oldest queued job a worker runs (or ``job_id``), in any process."""
        return self.services.jobs.claim(owner, job_id)

    def run_job(
        self,
        job: str | Claim,
        work: Callable[[], dict[str, Any]],
        *,
        owner: str | None = None,
        on_wait: Callable[[str], object] | None = None,
    ) -> bool:
        """Run ``work`` as ``job`` (claimed; or a job id, claimed here, waiting while
        another retrain runs), recording its result or error; False: not run (another
        worker claimed it, or this attempt was given up on)."""
        if isinstance(job, Claim):
            return self.services.jobs.run(job, work)
        return self.services.jobs.run_here(job, work, owner or process_owner("here"), on_wait)

    def job_log(self, job_id: str, line: str) -> None:
        self.services.jobs.log(job_id, line)

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.services.jobs.recent(limit)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.services.jobs.get(job_id)

    def wait_job(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_line: Callable[[str], object] | None = None,
    ) -> dict[str, Any]:
        """Job ``job_id`` once finished, wherever it ran (as it stands after ``timeout_s``)."""
        return self.services.jobs.wait(job_id, timeout_s, on_line)

    def recover_jobs(self, stale_s: float) -> list[Recovered]:
        """Jobs whose worker stopped (silent ``stale_s`` seconds, or gone from this host)
        queued again until ``job_attempts`` tries, then failed with the reason."""
        return self.services.jobs.recover(stale_s)

    def heartbeat_jobs(self, owner: str) -> int:
        return self.services.jobs.heartbeat(owner)

    def lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew a lease held in the database, across processes and machines."""
        return self.services.jobs.lease(name, owner, ttl_s)

    def release_lease(self, name: str, owner: str) -> None:
        self.services.jobs.release(name, owner)

    def deliver_webhooks(self, send: Send) -> int:
        """Send the webhook deliveries that are due through ``send``; how many tried."""
        return self.services.events.deliver_due(send)

    def webhook_deliveries(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.services.events.deliveries(limit)

    def retrain_policy(self) -> tuple[str | None, dict[str, Any]]:
        """The retrain policy's state and the trigger due now (None: none)."""
        return self.services.jobs.policy()
