"""The job runner of a serving process (or of ``flywheel worker``): it takes jobs from
the queue in the database, one at a time, off the request path.

Asking for a retrain (``POST /v1/retrain``, a forget, the retrain policy, the CLI)
queues a row whose kind and params describe the work; whichever runner on the database
is free claims the oldest (``Project.claim_job``), so a job asked of one server may run
on another, or on a training machine's ``flywheel worker``. One retrain-kind job runs at
a time everywhere (the database refuses a second claim). While a job runs its heartbeat
beats every ``policy_check_s``; a job whose worker died (its process gone from this
machine, or 3 x ``job_lease_s`` without a sign of life) is queued again, with a log line
naming the dead worker, until it has been tried ``job_attempts`` times, and then failed
saying so. A ticker thread, every ``policy_check_s``, does that recovery, closes the
monitoring windows and starts a retrain when the retrain policy says one is due
(``feedback``, ``schedule`` or ``drift``), deciding under the ``retrain`` lease so that
two processes never both start one.

Work a dying attempt did partly is safe to redo: a retrain registers its version only at
its end (a retry trains what an earlier attempt curated, if that one stopped before
training it), and a forget-retrain whose retrain is already on the audit record is not
run again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from flywheel.errors import RegistryError
from flywheel.jobs.service import Claim, process_owner
from flywheel.loop.retrain import RetrainResult
from flywheel.project import Project
from flywheel.training import EpochReport

__all__ = ["DRIFT_LEASE", "RETRAIN_LEASE", "JobRunner"]

log = logging.getLogger("flywheel.serving")

#: one process at a time decides whether the retrain policy starts a retrain
RETRAIN_LEASE = "retrain"
#: one process at a time closes monitoring windows
DRIFT_LEASE = "drift"


class _Lost(Exception):
    """This worker was given up on while it ran the job (another attempt has it)."""


class JobRunner:
    def __init__(self, project: Project, *, decide: bool = True) -> None:
        """``decide``: also run the retrain policy and the monitoring windows (a server);
        False: only take jobs (``flywheel worker``)."""
        self.project = project
        self.decide = decide
        #: a future per job asked of this runner, done once the job finished, wherever
        #: it ran (tests and shells wait on them)
        self.futures: dict[str, Future[None]] = {}
        #: called after a job's work, before it is marked done (the server's predictor
        #: swaps to a newly promoted version there, so requests sent after the job
        #: reports success are answered by the new production)
        self.after_work: Callable[[], object] | None = None
        #: called with the newest monitoring windows after each tick (the metrics)
        self.on_windows: Callable[[dict[str, Any]], object] | None = None
        #: called with a line for each step of a job run here (``flywheel worker``)
        self.on_line: Callable[[str], object] | None = None
        st = project.settings
        self.lease_s = st.job_lease_s
        self.check_s = st.policy_check_s
        #: this process, as the jobs and the lease name it
        self.owner = process_owner(uuid.uuid4().hex[:8])
        #: the job this runner is running, if any
        self.current: Claim | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ticker: threading.Thread | None = None
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        """Queue again what dead workers left; then tick, and take jobs, until ``shutdown``."""
        self.recover()
        with self._lock:
            self._ticker = threading.Thread(target=self._ticks, name="flywheel-policy", daemon=True)
        self._ticker.start()
        self._ensure_worker()

    def _ticks(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.tick()
            except Exception:  # a busy or unreachable database: next tick
                log.exception("the job queue or the retrain policy could not be checked")

    def tick(self) -> str | None:
        """One round of the ticker; the id of a retrain it started, if any."""
        self.recover()
        if not self.decide:
            return None
        try:
            self.monitor()
        except Exception:  # monitoring must never stop the policy (or the recovery)
            log.exception("the monitoring windows could not be updated")
        trigger, _ = self.project.retrain_policy()
        if trigger is None:
            return None
        if not self.project.lease(RETRAIN_LEASE, self.owner, self.lease_s):
            return None  # another process is deciding
        try:
            trigger, _ = self.project.retrain_policy()  # again, under the lease
            if trigger is None:
                return None
            log.info("the retrain policy starts a retrain (%s)", trigger)
            return self.submit_retrain({}, trigger=trigger)
        except RegistryError:  # one with other options was asked for meanwhile
            return None
        finally:
            self.project.release_lease(RETRAIN_LEASE, self.owner)

    def recover(self) -> int:
        """Queue again (or fail, out of attempts) the jobs whose worker stopped; how many."""
        found = self.project.recover_jobs(stale_s=3 * self.lease_s)
        for r in found:
            then = "queued again" if r.requeued else f"failed: {r.error}"
            line = f"({r.kind}): the worker {r.owner} running attempt {r.attempt} stopped"
            log.warning("job %s %s (%s); %s", r.job_id, line, r.why, then)
            self._say(f"job {r.job_id[:8]} {line} ({r.why}); {then}")
        if found:
            self._wake.set()
        return len(found)

    def monitor(self) -> list[int]:
        """Close the monitoring windows due (one process at a time, under the drift
        lease), log alarms; the windows closed."""
        closing = self.project.lease(DRIFT_LEASE, self.owner, self.lease_s)
        try:
            m = self.project.monitoring(limit=5, update=closing)
        finally:
            if closing:
                self.project.release_lease(DRIFT_LEASE, self.owner)
        for w in m["windows"]:
            if w["window"] in m["closed"] and w["alarm"]:
                log.warning(
                    "drift alarm: window %d of v%d (%d calls), scores %s above %s",
                    w["window"], w["model_version"], w["calls"], w["scores"], w["thresholds"],
                )  # fmt: skip
        if self.on_windows is not None:
            self.on_windows(m)
        closed: list[int] = m["closed"]
        return closed

    # -- asking -------------------------------------------------------------------------

    def submit_retrain(self, overrides: dict[str, Any], *, trigger: str = "manual") -> str:
        """Queue a retrain; one asked for while another waits to start joins it (the same
        job id), so the queue stays bounded; with other options it is refused."""
        return self._track(self.project.create_job("retrain", dict(overrides), trigger=trigger))

    def submit_forget_retrain(self, audit_id: int) -> str:
        """Retrain production after a forget (the erasure itself is already committed)."""
        return self._track(
            self.project.create_job("forget-retrain", {"audit_id": audit_id}, trigger="forget")
        )

    def forget(self, user_id: str) -> dict[str, Any]:
        """Forget a user now (answered once the erasure is committed; the served model
        already swapped off a withdrawn version) and, when production used their rows,
        retrain without them as a job (``retrain_job``; None when not needed)."""
        out = self.project.forget(user_id, retrain=False)
        out["retrain_job"] = (
            self.submit_forget_retrain(out["audit_id"]) if out["needs_retrain"] else None
        )
        return out

    def _track(self, job_id: str) -> str:
        with self._lock:
            self.futures.setdefault(job_id, Future())
        self._ensure_worker()
        self._wake.set()
        return job_id

    # -- taking -------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None and not self._stop.is_set():
                self._worker = threading.Thread(target=self._take, name="flywheel-job", daemon=True)
                self._worker.start()

    def _take(self) -> None:
        """Claim and run jobs until stopped (a runner never started: until the jobs asked
        of it finished, wherever they ran); between them, settle the futures of jobs that
        finished elsewhere."""
        while not self._stop.is_set():
            try:
                claim = self.project.claim_job(self.owner)
                if claim is not None:
                    self._run(claim)
                    # Sit out one poll, so that the next job goes to a runner that was
                    # waiting (several servers share the work, not the first to finish).
                    self._stop.wait(min(self.check_s, 1.0))
                    continue
                self._settle()
            except Exception:  # a busy or unreachable database: try again shortly
                log.exception("the job queue could not be read")
            with self._lock:
                if self._ticker is None and all(f.done() for f in self.futures.values()):
                    self._worker = None
                    return
            self._wake.wait(min(self.check_s, 1.0))
            self._wake.clear()

    def _run(self, claim: Claim) -> None:
        short = claim.job_id[:8]
        attempts = self.project.settings.job_attempts
        log.info(
            "job %s (%s, %s): attempt %d of %d started on %s",
            claim.job_id, claim.kind, claim.trigger, claim.attempt, attempts, self.owner,
        )  # fmt: skip
        self._say(
            f"job {short} ({claim.kind}, {claim.trigger}) started: attempt {claim.attempt} "
            f"of {attempts} on {self.owner}"
        )
        self.current = claim
        try:
            recorded = self.project.run_job(claim, self._work(claim))
        finally:
            self.current = None
        job = self.project.job(claim.job_id)
        if recorded:
            outcome = job["error"].splitlines()[0] if job["error"] else _outcome(job["result"])
            log.info(
                "job %s: attempt %d %s on %s: %s",
                claim.job_id, claim.attempt, job["status"], self.owner, outcome,
            )  # fmt: skip
            self._say(f"job {short} {job['status']}: {outcome}")
        else:
            log.warning(
                "job %s: attempt %d was given up on while it ran on %s; its end not recorded",
                claim.job_id, claim.attempt, self.owner,
            )  # fmt: skip
            self._say(f"job {short}: given up on while it ran here (not recorded)")
        self._settle()

    def _work(self, claim: Claim) -> Callable[[], dict[str, Any]]:
        """The work a job's row describes (its kind and params)."""
        on_epoch = self._logger(claim)

        def retrain() -> dict[str, Any]:
            config = self.project.train_config(**claim.params)
            result = self.project.retrain(config, on_epoch=on_epoch)
            if result.train is None and claim.attempt > 1:
                result = self._train_what_was_curated(claim, config, result, on_epoch)
            return self._finish(result.to_json())

        def forget_retrain() -> dict[str, Any]:
            audit_id = int(claim.params["audit_id"])
            done = self._forget_retrained(audit_id) if claim.attempt > 1 else None
            if done is not None:
                self.project.job_log(claim.job_id, "retrained by an attempt before: not again")
                return done
            return self._finish(self.project.retrain_after_forget(audit_id, on_epoch=on_epoch))

        def unknown() -> dict[str, Any]:
            raise RegistryError(f"job kind {claim.kind!r} is not one a worker runs")

        return {"retrain": retrain, "forget-retrain": forget_retrain}.get(claim.kind, unknown)

    def _train_what_was_curated(
        self, claim: Claim, config: Any, skipped: RetrainResult, on_epoch: Any
    ) -> RetrainResult:
        """An attempt before this one curated the answers into a dataset version and
        stopped before a model was trained on it: train it now."""
        newest = self.project.dataset()
        trained = {m.dataset_version for m in self.project.models()}
        began = claim.first_started_at
        if (
            newest.version in trained
            or newest.created_at is None
            or began is None
            or newest.created_at < datetime.fromisoformat(began)
        ):
            return skipped
        self.project.job_log(
            claim.job_id, f"dataset v{newest.version} was curated by an attempt before: training it"
        )
        t = self.project.train(config, on_epoch=on_epoch, reason="retrain")
        return RetrainResult(newest.n_feedback, skipped.curation, newest, t)

    def _forget_retrained(self, audit_id: int) -> dict[str, Any] | None:
        for e in self.project.audit_log("forget"):
            if e["id"] == audit_id and e["detail"].get("retrain") is not None:
                return {"audit_id": e["id"], "action": e["action"], "subject": e["subject"],
                        "created_at": e["created_at"], **e["detail"]}  # fmt: skip
        return None

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        if self.after_work is not None:
            self.after_work()
        return result

    def _logger(self, claim: Claim) -> Callable[[EpochReport], None]:
        def check() -> None:
            if claim.lost.is_set():
                raise _Lost(f"attempt {claim.attempt} of job {claim.job_id} was given up on")

        def stage(text: str) -> None:
            check()
            self.project.job_log(claim.job_id, text)

        def log(r: EpochReport) -> None:
            check()
            line = r.line()
            self.project.job_log(claim.job_id, line)
            self._say(f"job {claim.job_id[:8]}: {line}")

        log.on_stage = stage  # type: ignore[attr-defined]
        return log

    def _settle(self) -> None:
        """Mark done the futures of jobs that finished (here or elsewhere)."""
        with self._lock:
            waiting = [j for j, f in self.futures.items() if not f.done()]
        for job_id in waiting:
            if self.project.job(job_id)["status"] in ("succeeded", "failed"):
                self.futures[job_id].set_result(None)

    def _say(self, line: str) -> None:
        if self.on_line is not None:
            self.on_line(line)

    def shutdown(self) -> None:
        """Finish the running job; queued ones stay queued, for any runner."""
        self._stop.set()
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.join()


def _outcome(result: dict[str, Any] | None) -> str:
    r = result or {}
    if r.get("skipped"):
        return f"skipped: {r.get('reason')}"
    if "model_version" in r:
        return f"v{r['model_version']} {'promoted' if r.get('promoted') else 'not promoted'}"
    retrain = r.get("retrain") or {}
    if retrain:
        return (
            f"v{retrain.get('version')} {'promoted' if retrain.get('promoted') else 'not promoted'}"
        )
    return "done"
