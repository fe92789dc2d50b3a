"""The jobs' service: work run as a job, its status, progress log, result or error on
record. Each method commits in one transaction (``run``: one to start, one to finish)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from flywheel.context import Context
from flywheel.errors import FlywheelError, NotFoundError
from flywheel.jobs import repo
from flywheel.store.schema import Job

__all__ = ["JobService"]


class JobService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, kind: str, params: dict[str, Any] | None = None) -> str:
        with self.ctx.db.session() as s:
            return repo.create_job(s, kind, params or {})

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

    def fail_interrupted(self) -> int:
        """Jobs a stopped process left queued or running are marked failed."""
        with self.ctx.db.session() as s:
            return repo.fail_interrupted(s)
