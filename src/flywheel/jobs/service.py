"""The jobs' service: work run as a job, its status, progress log, result or error on
record. Each method commits in one transaction (``run``: one to start, one to finish)."""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

from flywheel.context import Context
from flywheel.drift import repo as drift_repo
from flywheel.errors import FlywheelError, NotFoundError
from flywheel.events import repo as events
from flywheel.feedback import repo as feedback_repo
from flywheel.jobs import repo
from flywheel.jobs.policy import Policy, PolicyState, due
from flywheel.store import retry_locked
from flywheel.store.schema import Job, utcnow

__all__ = ["JobService"]


def _dead_here(owner: str) -> bool:
    """Is ``owner`` (host:pid:nonce) a process of this machine that no longer runs?"""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname()[:40] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class JobService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(
        self,
        kind: str,
        params: dict[str, Any] | None = None,
        *,
        trigger: str = "manual",
        owner: str | None = None,
    ) -> str:
        with self.ctx.db.session() as s:
            job_id = repo.create_job(s, kind, params or {}, trigger=trigger, owner=owner)
            if kind in repo.RETRAINS:
                events.record(
                    s, self.ctx.settings.webhooks, "retrain.queued",
                    {"job_id": job_id, "kind": kind, "trigger": trigger, "params": params or {}},
                )  # fmt: skip
            return job_id

    def run(self, job_id: str, work: Callable[[], dict[str, Any]]) -> None:
        """Run ``work`` as job ``job_id``, recording its status, result or error."""
        with self.ctx.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError("job", job_id)
            repo.start_job(s, job)
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            result = work()
        except Exception as exc:  # a job's failure is its result, not the server's
            error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, FlywheelError):
                error += "\n" + traceback.format_exc(limit=5)
        with self.ctx.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            repo.finish_job(s, job, result=result, error=error)
            if job.kind in repo.RETRAINS:
                events.record(
                    s, self.ctx.settings.webhooks, "retrain.finished",
                    {"job_id": job_id, "kind": job.kind, "trigger": job.trigger,
                     "status": job.status, "error": (error or "").split("\n")[0] or None,
                     "model_version": (result or {}).get("model_version"),
                     "promoted": (result or {}).get("promoted")},
                )  # fmt: skip

    def log(self, job_id: str, line: str) -> None:
        """Append a progress line to a job (shown while it runs)."""
        with self.ctx.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                repo.append_log(job, line)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs first, with their results or errors."""
        with self.ctx.db.session() as s:
            return [repo.job_json(j) for j in repo.list_jobs(s, limit)]

    def get(self, job_id: str) -> dict[str, Any]:
        with self.ctx.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError("job", job_id)
            return repo.job_json(job)

    def fail_interrupted(self, stale_s: float | None = None) -> int:
        """Jobs a stopped process left queued or running are marked failed (with
        ``stale_s``: only those without a sign of life for that long)."""
        with self.ctx.db.session() as s:
            return repo.fail_interrupted(s, stale_s, None if stale_s is None else _dead_here)

    def heartbeat(self, owner: str) -> int:
        def beat() -> int:
            with self.ctx.db.session() as s:
                return repo.heartbeat(s, owner)

        return retry_locked(beat)

    def lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew a lease in the database (one retrain at a time everywhere)."""

        def take() -> bool:
            with self.ctx.db.session() as s:
                return repo.acquire_lease(s, name, owner, ttl_s)

        return retry_locked(take)

    def release(self, name: str, owner: str) -> None:
        def drop() -> None:
            with self.ctx.db.session() as s:
                repo.release_lease(s, name, owner)

        retry_locked(drop)

    def policy(self) -> tuple[str | None, dict[str, Any]]:
        """The retrain policy's state, and the trigger due now (None: none)."""
        st = self.ctx.settings
        policy = Policy(
            st.retrain_min_feedback, st.retrain_interval_s, st.retrain_cooldown_s,
            st.retrain_on_drift, st.drift_min_feedback,
        )  # fmt: skip
        with self.ctx.db.session() as s:
            last = repo.last_created(s)
            state = PolicyState(
                new_answers=feedback_repo.answers_since(s, last),
                last_retrain_at=last,
                busy=repo.unfinished(s) > 0,
                now=utcnow(),
                drift_alarms=drift_repo.alarms_since(s, last),
            )
        return due(policy, state)
