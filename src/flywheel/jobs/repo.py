"""Background jobs' rows: created queued, run, finished as succeeded or failed."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.store.schema import Job, Lease, utcnow

__all__ = [
    "acquire_lease",
    "append_log",
    "create_job",
    "fail_interrupted",
    "finish_job",
    "heartbeat",
    "job_json",
    "last_created",
    "list_jobs",
    "progress",
    "release_lease",
    "start_job",
    "unfinished",
]

RETRAINS = ("retrain", "forget-retrain")


def create_job(
    s: Session, kind: str, params: dict[str, Any], *, trigger: str = "manual", owner: str | None
) -> str:
    job_id = str(uuid.uuid4())
    s.add(
        Job(
            id=job_id,
            kind=kind,
            status="queued",
            params=params,
            trigger=trigger,
            owner=owner,
            heartbeat_at=utcnow(),
        )
    )
    return job_id


def start_job(s: Session, job: Job) -> None:
    job.status, job.started_at, job.heartbeat_at = "running", utcnow(), utcnow()


def finish_job(
    s: Session, job: Job, *, result: dict[str, Any] | None = None, error: str | None = None
) -> None:
    job.status = "failed" if error is not None else "succeeded"
    job.result, job.error, job.finished_at = result, error, utcnow()


#: a progress line: "epoch 3/30: ..." or "refit 2/7 on all rows: ..."
_STEP = re.compile(r"^(epoch|refit) (\d+)/(\d+)\b")


def progress(job: Job, log: list[str]) -> dict[str, Any] | None:
    """Where a running job stands, from its newest progress line: the phase, its step
    and steps, the share done and, from the phase's pace so far, the seconds left (an
    upper bound while early stopping may end the search sooner)."""
    if job.status != "running" or job.started_at is None:
        return None
    steps = [(m.group(1), int(m.group(2)), int(m.group(3))) for m in map(_STEP.match, log) if m]
    if not log or not _STEP.match(log[-1]):  # a stage between epochs: decoding, the gate
        stage = log[-1] if log else "preparing"
        return {"phase": stage, "step": None, "steps": None, "fraction": None, "eta_s": None}
    phase, step, total = steps[-1]
    began = sum(1 for p, _, _ in steps if p != phase)  # lines of the phases before
    elapsed = (utcnow() - job.started_at).total_seconds()
    per_step = elapsed / max(1, began + step)
    return {
        "phase": "fit" if phase == "epoch" else phase,
        "step": step,
        "steps": total,
        "fraction": round(step / total, 4),
        "eta_s": round(per_step * (total - step), 1),
    }


def job_json(job: Job) -> dict[str, Any]:
    log = (job.log or "").splitlines()
    return {
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status,
        "trigger": job.trigger,
        "params": job.params,
        "result": job.result,
        "error": job.error,
        "log": log,
        "progress": progress(job, log),
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def fail_interrupted(
    s: Session, stale_s: float | None = None, dead: Callable[[str], bool] | None = None
) -> int:
    """Jobs left queued or running by a process that stopped are marked failed: every
    one (``stale_s`` None: one process owns the project), or those whose owner has not
    shown a sign of life for ``stale_s`` seconds, has none on record, or is ``dead``."""
    q = select(Job).where(Job.status.in_(("queued", "running")))
    cutoff = None if stale_s is None else utcnow() - timedelta(seconds=stale_s)
    jobs = [
        job
        for job in s.scalars(q).all()
        if cutoff is None
        or job.owner is None
        or job.heartbeat_at is None
        or job.heartbeat_at < cutoff
        or (dead is not None and dead(job.owner))
    ]
    for job in jobs:
        finish_job(s, job, error="interrupted: the server stopped before the job finished")
    return len(jobs)


def heartbeat(s: Session, owner: str) -> int:
    """The owner's unfinished jobs are alive (now)."""
    r = s.execute(
        update(Job)
        .where(Job.owner == owner, Job.status.in_(("queued", "running")))
        .values(heartbeat_at=utcnow())
    )
    return int(r.rowcount or 0)  # type: ignore[attr-defined]


def unfinished(s: Session, kinds: tuple[str, ...] = RETRAINS) -> int:
    """Jobs of these kinds queued or running, in any process."""
    q = select(func.count()).where(Job.kind.in_(kinds), Job.status.in_(("queued", "running")))
    return int(s.scalar(q.select_from(Job)) or 0)


def last_created(s: Session, kinds: tuple[str, ...] = RETRAINS) -> datetime | None:
    """When the newest job of these kinds was asked for."""
    return s.scalar(select(func.max(Job.created_at)).where(Job.kind.in_(kinds)))


def acquire_lease(s: Session, name: str, owner: str, ttl_s: float) -> bool:
    """Take (or renew) lease ``name`` for ``ttl_s`` seconds unless another owner holds
    it unexpired. One conditional UPDATE (or the first INSERT): atomic on SQLite and
    PostgreSQL alike."""
    now = utcnow()
    until = now + timedelta(seconds=ttl_s)
    r = s.execute(
        update(Lease)
        .where(Lease.name == name, or_(Lease.owner == owner, Lease.expires_at < now))
        .values(owner=owner, expires_at=until)
    )
    if r.rowcount:  # type: ignore[attr-defined]
        return True
    if s.get(Lease, name) is not None:
        return False
    try:
        with s.begin_nested():
            s.add(Lease(name=name, owner=owner, expires_at=until))
    except IntegrityError:  # another process inserted it first
        return False
    return True


def release_lease(s: Session, name: str, owner: str) -> None:
    s.execute(delete(Lease).where(Lease.name == name, Lease.owner == owner))


def append_log(job: Job, line: str) -> None:
    """Add a progress line to a job (shown while it runs)."""
    job.log = (job.log or "") + line.rstrip("\n") + "\n"


def list_jobs(s: Session, limit: int) -> list[Job]:
    """The newest jobs first."""
    return list(s.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))
