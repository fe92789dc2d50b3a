"""Background jobs' rows: created queued, run, finished as succeeded or failed."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.store.schema import Job, utcnow

__all__ = [
    "append_log",
    "create_job",
    "fail_interrupted",
    "finish_job",
    "job_json",
    "list_jobs",
    "start_job",
]


def create_job(s: Session, kind: str, params: dict[str, Any]) -> str:
    job_id = str(uuid.uuid4())
    s.add(Job(id=job_id, kind=kind, status="queued", params=params))
    return job_id


def start_job(s: Session, job: Job) -> None:
    job.status, job.started_at = "running", utcnow()


def finish_job(
    s: Session, job: Job, *, result: dict[str, Any] | None = None, error: str | None = None
) -> None:
    job.status = "failed" if error is not None else "succeeded"
    job.result, job.error, job.finished_at = result, error, utcnow()


def job_json(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status,
        "params": job.params,
        "result": job.result,
        "error": job.error,
        "log": (job.log or "").splitlines(),
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def fail_interrupted(s: Session) -> int:
    """Jobs left queued or running by a process that stopped are marked failed."""
    jobs = s.scalars(select(Job).where(Job.status.in_(("queued", "running")))).all()
    for job in jobs:
        finish_job(s, job, error="interrupted: the server stopped before the job finished")
    return len(jobs)


def append_log(job: Job, line: str) -> None:
    """Add a progress line to a job (shown while it runs)."""
    job.log = (job.log or "") + line.rstrip("\n") + "\n"


def list_jobs(s: Session, limit: int) -> list[Job]:
    """The newest jobs first."""
    return list(s.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))
