"""Background jobs' rows: the queue. A job is created queued, claimed by one worker
(running, an attempt counted), and finished as succeeded or failed; a job whose worker
stopped is queued again (``recover``) until it has had its attempts.

Claims are atomic on both stores: on PostgreSQL the oldest queued row is locked with
``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent claimers take the next one), on SQLite
the claim is an ``UPDATE ... WHERE id = :id AND status = 'queued'`` whose row count says
who won. Every write a worker makes to its job after the claim (heartbeat, finish) is
fenced on (owner, attempt): a worker that was given up on cannot overwrite the attempt
after it. Two unique partial indexes (``schema.Job``) keep one retrain running, and one
fresh retrain waiting, at a time.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.store.schema import RETRAIN_KINDS, Job, Lease, utcnow

__all__ = [
    "RETRAINS",
    "RUNNABLE",
    "Recovered",
    "acquire_lease",
    "append_log",
    "beat",
    "claim_job",
    "create_job",
    "finish_job",
    "heartbeat",
    "job_json",
    "last_created",
    "list_jobs",
    "progress",
    "recover",
    "release_lease",
    "unfinished",
    "waiting_retrain",
]

#: kinds that run one at a time everywhere
RETRAINS = RETRAIN_KINDS
#: kinds a worker runs from their row alone (kind and params); others (the CLI's
#: ``train``) are run by the process that created them
RUNNABLE = RETRAINS


def create_job(
    s: Session, kind: str, params: dict[str, Any], *, trigger: str = "manual", owner: str | None
) -> str:
    """A queued job (flushed: a second fresh retrain waiting fails here, IntegrityError)."""
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
            attempts=0,
            tries=[],
        )
    )
    s.flush()
    return job_id


def waiting_retrain(s: Session, params: dict[str, Any]) -> Job | None:
    """A queued retrain asked with ``params`` (one queued again after its worker died
    too), else the fresh retrain waiting to be claimed (at most one: the index), if any."""
    q = select(Job).where(Job.status == "queued", Job.kind == "retrain")
    queued = list(s.scalars(q.order_by(Job.created_at, Job.id)))
    same = [j for j in queued if j.params == params]
    fresh = [j for j in queued if j.attempts == 0]
    return (same or fresh)[0] if same or fresh else None


def claim_job(
    s: Session, owner: str, *, job_id: str | None = None, kinds: tuple[str, ...] = RUNNABLE
) -> Job | None:
    """Claim the oldest queued job of ``kinds`` (or job ``job_id``, of any kind) for
    ``owner``: running, its attempts + 1, a try recorded. None: nothing to claim, or
    other claimers won what there was; IntegrityError: a retrain claimed at the moment
    another retrain was (the unique index refused the second)."""
    q = select(Job.id).where(Job.status == "queued")
    q = q.where(Job.id == job_id) if job_id is not None else q.where(Job.kind.in_(kinds))
    running = select(func.count()).select_from(Job).where(Job.status == "running")
    if s.scalar(running.where(Job.kind.in_(RETRAINS))):
        q = q.where(Job.kind.not_in(RETRAINS))
    q = q.order_by(Job.created_at, Job.id)
    if s.get_bind().dialect.name == "postgresql":
        # Concurrent claimers skip each other's locked rows; but a retrain can only be
        # claimed while none runs, so for one only the oldest is tried (first come,
        # first served): a claimer that finds it locked leaves it to the one holding it.
        oldest = s.execute(q.add_columns(Job.kind).limit(1)).first()
        if oldest is not None and oldest[1] in RETRAINS:
            q = q.where(Job.id == oldest[0])
        picked = s.scalar(q.limit(1).with_for_update(skip_locked=True))
        candidates = [] if picked is None else [picked]
    else:
        candidates = list(s.scalars(q.limit(8)))
    now = utcnow()
    for candidate in candidates:
        # IntegrityError here: another retrain was claimed at the same moment (the
        # caller rolls back; nothing was written before it in this transaction)
        won = s.execute(
            update(Job)
            .where(Job.id == candidate, Job.status == "queued")
            .values(
                status="running",
                owner=owner,
                attempts=Job.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                finished_at=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if won:
            job = s.get(Job, candidate, populate_existing=True)
            assert job is not None
            entry = {"attempt": job.attempts, "owner": owner, "started_at": now.isoformat(),
                     "ended_at": None, "outcome": "running"}  # fmt: skip
            job.tries = [*(job.tries or []), entry]
            return job
    return None


def _end_try(job: Job, outcome: str, **more: Any) -> None:
    tries = list(job.tries or [])
    if tries:
        tries[-1] = {**tries[-1], "ended_at": utcnow().isoformat(), "outcome": outcome, **more}
    job.tries = tries


def _fenced(job_id: str, owner: str, attempt: int) -> Any:
    return update(Job).where(
        Job.id == job_id, Job.owner == owner, Job.attempts == attempt, Job.status == "running"
    )


def finish_job(
    s: Session,
    job_id: str,
    *,
    owner: str,
    attempt: int,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> Job | None:
    """Job ``job_id`` succeeded (or failed, with ``error``) on this attempt; None when the
    attempt is no longer the job's (its worker was given up on and the job moved on)."""
    status = "failed" if error is not None else "succeeded"
    r = s.execute(
        _fenced(job_id, owner, attempt)
        .values(status=status, result=result, error=error, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if not r.rowcount:  # type: ignore[attr-defined]
        return None
    job = s.get(Job, job_id, populate_existing=True)
    assert job is not None
    _end_try(job, status)
    return job


def beat(s: Session, job_id: str, owner: str, attempt: int) -> bool:
    """Attempt ``attempt`` of the job is alive (now); False: it is no longer the job's."""
    r = s.execute(
        _fenced(job_id, owner, attempt)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(r.rowcount)  # type: ignore[attr-defined]


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
        "attempts": job.attempts or 0,
        "owner": job.owner,
        "tries": list(job.tries or []),
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


@dataclass(frozen=True)
class Recovered:
    """A job whose worker stopped: queued again, or failed (``error``)."""

    job_id: str
    kind: str
    owner: str | None
    attempt: int
    why: str
    error: str | None = None

    @property
    def requeued(self) -> bool:
        return self.error is None


def _why_stopped(job: Job, cutoff: datetime, dead: Callable[[str], bool]) -> str | None:
    if job.owner is None:
        return "no worker on record"
    if dead(job.owner):
        return "its process is gone"
    if job.heartbeat_at is None:
        return "no sign of life on record"
    if job.heartbeat_at < cutoff:
        return f"no sign of life since {job.heartbeat_at.isoformat(timespec='seconds')}"
    return None


def _gave_up(job: Job, owners: list[str]) -> str:
    if job.kind not in RUNNABLE:
        return f"interrupted: the process running it stopped (owner {job.owner})"
    shown = ", ".join(dict.fromkeys(owners))
    if job.attempts <= 1:
        return f"the worker running it stopped (owner {shown}) on its only attempt"
    return f"the worker running it stopped (owner {shown}) on each of {job.attempts} attempts"


def recover(
    s: Session, *, stale_s: float, dead: Callable[[str], bool], attempts: int
) -> list[Recovered]:
    """Jobs whose worker stopped — running with no sign of life for ``stale_s`` seconds
    (or none on record), or whose owner is ``dead`` — are queued again while they have
    attempts left (of ``attempts``) and are of a kind a worker runs from its row; else
    failed with the reason. A kind no worker runs that its process left queued fails
    the same way. Each write is fenced on what was read (owner, attempt, staleness), so
    a heartbeat that lands meanwhile wins."""
    now = utcnow()
    cutoff = now - timedelta(seconds=stale_s)
    q = select(Job).where(
        or_(
            Job.status == "running",
            (Job.status == "queued") & Job.owner.is_not(None) & Job.kind.not_in(RUNNABLE),
        )
    )
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    out: list[Recovered] = []
    for job in s.scalars(q).all():
        why = _why_stopped(job, cutoff, dead)
        if why is None:
            continue
        tries = list(job.tries or [])
        if tries and tries[-1].get("ended_at") is None:
            last = job.heartbeat_at.isoformat() if job.heartbeat_at else None
            tries[-1] = {**tries[-1], "ended_at": now.isoformat(), "outcome": "stopped",
                         "why": why, "last_sign_of_life": last}  # fmt: skip
        again = job.kind in RUNNABLE and job.status == "running" and job.attempts < attempts
        owners = [str(t["owner"]) for t in tries if t.get("outcome") == "stopped"]
        error = None if again else _gave_up(job, owners or [str(job.owner)])
        line = f"attempt {job.attempts}: the worker {job.owner} stopped ({why}); " + (
            f"queued again for attempt {job.attempts + 1} of {attempts}" if again else "failed"
        )
        fence = [
            Job.id == job.id,
            Job.status == job.status,
            Job.attempts == job.attempts,
            Job.owner.is_(None) if job.owner is None else Job.owner == job.owner,
        ]
        if job.owner is None or why != "its process is gone":
            fence.append(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
        values: dict[str, Any] = {"log": (job.log or "") + line + "\n", "tries": tries}
        if again:
            values |= {"status": "queued", "owner": None, "heartbeat_at": None, "started_at": None}
        else:
            values |= {"status": "failed", "error": error, "finished_at": now}
        r = s.execute(
            update(Job).where(*fence).values(**values).execution_options(synchronize_session=False)
        )
        if r.rowcount:  # type: ignore[attr-defined]
            out.append(Recovered(job.id, job.kind, job.owner, job.attempts, why, error))
    return out


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
