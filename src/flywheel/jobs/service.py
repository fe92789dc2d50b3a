"""The jobs' service: the queue in the database. Work is created as a queued job whose
kind and params describe it whole; a worker claims it (``claim``), runs it with a
heartbeat (``run``) and records its result or error; ``recover`` queues again what a
stopped worker left. Each method commits in its own transactions."""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.context import Context
from flywheel.drift import repo as drift_repo
from flywheel.errors import FlywheelError, NotFoundError, RegistryError
from flywheel.events import repo as events
from flywheel.feedback import repo as feedback_repo
from flywheel.jobs import repo
from flywheel.jobs.policy import Policy, PolicyState, due
from flywheel.store import retry_locked
from flywheel.store.schema import Job, utcnow

__all__ = ["Claim", "JobService", "process_owner"]

FINISHED = ("succeeded", "failed")


def process_owner(tag: str) -> str:
    """This process as the jobs name their worker: ``host:pid:tag`` (64 characters at most)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{tag[:12]}"


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


@dataclass
class Claim:
    """A job this worker holds: attempt ``attempt`` of it, by ``owner``. ``lost`` is set
    once the heartbeat finds the attempt is no longer the job's (the worker was given
    up on): the work should stop at its next step, its result would not be recorded."""

    job_id: str
    kind: str
    params: dict[str, Any]
    trigger: str
    attempt: int
    owner: str
    #: when the first attempt started (ISO), to know what an earlier attempt did
    first_started_at: str | None = None
    lost: threading.Event = field(default_factory=threading.Event, repr=False)


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
        """A queued job. A retrain asked for while a fresh one waits joins it (its id)
        when the options are the same, and is refused (``RegistryError``) when not: at
        most one waits, however many servers are asked at once (the database's index
        decides)."""
        given = dict(params or {})
        # A queued job of a kind workers run belongs to none of them until claimed.
        held = None if kind in repo.RUNNABLE else owner
        for _ in range(8):  # the waiting one may be claimed between two looks
            if kind == "retrain":
                with self.ctx.db.session() as s:
                    waiting = repo.waiting_retrain(s, given)
                    if waiting is not None:
                        return _join(waiting, given)
            try:
                return retry_locked(lambda: self._insert(kind, given, trigger, held))
            except IntegrityError:
                if kind != "retrain":
                    raise
        raise RegistryError("a retrain could not be queued: the queue kept changing; ask again")

    def _insert(self, kind: str, params: dict[str, Any], trigger: str, owner: str | None) -> str:
        with self.ctx.db.session() as s:
            job_id = repo.create_job(s, kind, params, trigger=trigger, owner=owner)
            if kind in repo.RETRAINS:
                events.record(
                    s, self.ctx.settings.webhooks, "retrain.queued",
                    {"job_id": job_id, "kind": kind, "trigger": trigger, "params": params},
                )  # fmt: skip
            return job_id

    def claim(self, owner: str, job_id: str | None = None) -> Claim | None:
        """Claim the oldest queued job a worker runs (or job ``job_id``, of any kind) for
        ``owner``; None when there is none to take now (a retrain waits while another
        runs, anywhere)."""

        def take() -> Claim | None:
            try:
                with self.ctx.db.session() as s:
                    job = repo.claim_job(s, owner, job_id=job_id)
                    if job is None:
                        return None
                    tries = job.tries or [{}]
                    return Claim(
                        job.id, job.kind, dict(job.params), job.trigger, job.attempts, owner,
                        first_started_at=tries[0].get("started_at"),
                    )  # fmt: skip
            except IntegrityError:  # another retrain was claimed at the same moment
                return None

        return retry_locked(take)

    def run(self, claim: Claim, work: Callable[[], dict[str, Any]]) -> bool:
        """Run ``work`` as the claimed attempt, its heartbeat beating every
        ``policy_check_s`` meanwhile; record its result or error. False when the attempt
        was no longer the job's at the end (nothing recorded)."""
        stop = threading.Event()
        beating = threading.Thread(
            target=self._beat, args=(claim, stop), name="flywheel-job-beat", daemon=True
        )
        beating.start()
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            result = work()
        except Exception as exc:  # a job's failure is its result, not the server's
            error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, FlywheelError):
                error += "\n" + traceback.format_exc(limit=5)
        finally:
            stop.set()
            beating.join()
        return retry_locked(lambda: self._finish(claim, result, error))

    def _finish(self, claim: Claim, result: dict[str, Any] | None, error: str | None) -> bool:
        with self.ctx.db.session() as s:
            job = repo.finish_job(
                s, claim.job_id, owner=claim.owner, attempt=claim.attempt,
                result=result, error=error,
            )  # fmt: skip
            if job is None:
                claim.lost.set()
                return False
            if job.kind in repo.RETRAINS:
                _finished_event(s, self.ctx, job)
            return True

    def _beat(self, claim: Claim, stop: threading.Event) -> None:
        every = self.ctx.settings.policy_check_s
        while not stop.wait(every):
            try:

                def beat() -> bool:
                    with self.ctx.db.session() as s:
                        return repo.beat(s, claim.job_id, claim.owner, claim.attempt)

                if not retry_locked(beat):
                    claim.lost.set()
                    return
            except Exception:  # a database hiccup: the next beat, well within 3 leases
                continue

    def run_here(
        self,
        job_id: str,
        work: Callable[[], dict[str, Any]],
        owner: str,
        on_wait: Callable[[str], object] | None = None,
    ) -> bool:
        """Claim job ``job_id`` for ``owner`` and run it, waiting while another retrain
        runs; False (not run) when another worker claimed it first."""
        said = False
        while True:
            claim = self.claim(owner, job_id)
            if claim is not None:
                self.run(claim, work)
                return True
            job = self.get(job_id)
            if job["status"] != "queued":
                return False
            if on_wait is not None and not said:
                on_wait("queued: waiting for the retrain running elsewhere to finish")
                said = True
            time.sleep(min(1.0, self.ctx.settings.policy_check_s))

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_line: Callable[[str], object] | None = None,
    ) -> dict[str, Any]:
        """Job ``job_id`` once finished, wherever it runs (``on_line``: each new progress
        line meanwhile); as it stands after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        shown = 0
        while True:
            job = self.get(job_id)
            if on_line is not None:
                for line in job["log"][shown:]:
                    on_line(line)
                shown = len(job["log"])
            if job["status"] in FINISHED or (deadline is not None and time.monotonic() > deadline):
                return job
            time.sleep(min(0.5, self.ctx.settings.policy_check_s))

    def log(self, job_id: str, line: str) -> None:
        """Append a progress line to a job (shown while it runs)."""

        def add() -> None:
            with self.ctx.db.session() as s:
                job = s.get(Job, job_id)
                if job is not None:
                    repo.append_log(job, line)

        retry_locked(add)

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

    def recover(self, stale_s: float) -> list[repo.Recovered]:
        """Jobs whose worker stopped (no sign of life for ``stale_s`` seconds, or its
        process gone from this machine) queued again, until ``job_attempts`` tries;
        then failed, saying so."""

        def sweep() -> list[repo.Recovered]:
            with self.ctx.db.session() as s:
                out = repo.recover(
                    s, stale_s=stale_s, dead=_dead_here, attempts=self.ctx.settings.job_attempts
                )
                for r in out:
                    job = s.get(Job, r.job_id)
                    if not r.requeued and job is not None and job.kind in repo.RETRAINS:
                        _finished_event(s, self.ctx, job)
                return out

        return retry_locked(sweep)

    def heartbeat(self, owner: str) -> int:
        def beat() -> int:
            with self.ctx.db.session() as s:
                return repo.heartbeat(s, owner)

        return retry_locked(beat)

    def lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew a lease in the database (one decision at a time everywhere)."""

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


def _join(waiting: Job, params: dict[str, Any]) -> str:
    if waiting.params == params:
        return waiting.id
    raise RegistryError(
        f"a retrain with other options ({waiting.params or 'the defaults'}) is queued as "
        f"job {waiting.id}; wait for it to start, or ask with the same options"
    )


def _finished_event(s: Session, ctx: Context, job: Job) -> None:
    result = job.result or {}
    events.record(
        s, ctx.settings.webhooks, "retrain.finished",
        {"job_id": job.id, "kind": job.kind, "trigger": job.trigger, "status": job.status,
         "error": (job.error or "").split("\n")[0] or None,
         "model_version": result.get("model_version"), "promoted": result.get("promoted"),
         "attempts": job.attempts},
    )  # fmt: skip
