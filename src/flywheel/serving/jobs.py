"""Background jobs of a serving process (retrains), one at a time, off the request path.

One retrain at a time *everywhere*: before a retrain starts, its process takes the
``retrain`` lease in the database (renewed while it trains, released after), so several
``flywheel serve`` processes or machines on one PostgreSQL never train at once; a job
waits, queued, while another process holds it. A ticker thread, every
``policy_check_s``, shows this process's jobs alive (a job whose process died is
marked failed after 3 x ``job_lease_s`` without a sign of life), renews the lease while
held, and starts a retrain when the retrain policy says one is due (``feedback`` or
``schedule``), deciding under the lease so that two processes never both start one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flywheel.errors import RegistryError
from flywheel.project import Project
from flywheel.training import EpochReport

__all__ = ["DRIFT_LEASE", "RETRAIN_LEASE", "JobRunner"]

log = logging.getLogger("flywheel.serving")

RETRAIN_LEASE = "retrain"
#: one process at a time closes monitoring windows
DRIFT_LEASE = "drift"


class JobRunner:
    def __init__(self, project: Project) -> None:
        self.project = project
        # One worker: retrains queue rather than compete for the same cores.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flywheel-job")
        self.futures: dict[str, Future[None]] = {}
        #: the retrain waiting to start (its job id and options), if any
        self._waiting: tuple[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        #: called after a job's work, before it is marked done (the server's predictor
        #: swaps to a newly promoted version there, so requests sent after the job
        #: reports success are answered by the new production)
        self.after_work: Callable[[], object] | None = None
        #: called with the newest monitoring windows after each tick (the metrics)
        self.on_windows: Callable[[dict[str, Any]], object] | None = None
        st = project.settings
        self.lease_s = st.job_lease_s
        self.check_s = st.policy_check_s
        #: this process, as the jobs and the lease name it
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._holding = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> None:
        """Mark failed what dead processes left, then tick until ``shutdown``."""
        self.project.fail_interrupted_jobs(stale_s=3 * self.lease_s)
        self._ticker = threading.Thread(target=self._ticks, name="flywheel-policy", daemon=True)
        self._ticker.start()

    def _ticks(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.tick()
            except Exception:  # a busy or unreachable database: next tick
                log.exception("the retrain policy could not be checked")

    def tick(self) -> str | None:
        """One round of the ticker; the id of a retrain it started, if any."""
        self.project.heartbeat_jobs(self.owner)
        if self._holding:
            self.project.lease(RETRAIN_LEASE, self.owner, self.lease_s)
        self.project.fail_interrupted_jobs(stale_s=3 * self.lease_s)
        try:
            self.monitor()
        except Exception:  # monitoring must never stop the policy (or the heartbeats)
            log.exception("the monitoring windows could not be updated")
        trigger, _ = self.project.retrain_policy()
        if trigger is None or self._waiting is not None or self._holding:
            return None
        if not self.project.lease(RETRAIN_LEASE, self.owner, self.lease_s):
            return None  # another process is retraining, or deciding to
        trigger, _ = self.project.retrain_policy()  # again, under the lease
        if trigger is None:
            self.project.release_lease(RETRAIN_LEASE, self.owner)
            return None
        log.info("the retrain policy starts a retrain (%s)", trigger)
        return self.submit_retrain({}, trigger=trigger)

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

    def _leased(self, job_id: str, work: Callable[[], dict[str, Any]]) -> None:
        """Run the job once this process holds the retrain lease (queued until then)."""
        while not self.project.lease(RETRAIN_LEASE, self.owner, self.lease_s):
            if self._stop.wait(min(self.check_s, 1.0)):
                return  # stopping: the job stays queued, failed at the next start
        self._holding = True
        try:
            self.project.run_job(job_id, work)
        finally:
            self._holding = False
            self.project.release_lease(RETRAIN_LEASE, self.owner)

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        if self.after_work is not None:
            self.after_work()
        return result

    def submit_retrain(self, overrides: dict[str, Any], *, trigger: str = "manual") -> str:
        """Queue a retrain; one asked for while another waits to start joins it (the same
        job id), so the queue stays bounded; with other options it is refused."""
        with self._lock:
            if self._waiting is not None:
                job_id, options = self._waiting
                if options == overrides:
                    return job_id
                raise RegistryError(
                    f"a retrain with other options ({options or 'the defaults'}) is queued as "
                    f"job {job_id}; wait for it to start, or ask with the same options"
                )
            job_id = self.project.create_job(
                "retrain", overrides, trigger=trigger, owner=self.owner
            )
            self._waiting = (job_id, dict(overrides))

        def work() -> dict[str, Any]:
            with self._lock:
                if self._waiting is not None and self._waiting[0] == job_id:
                    self._waiting = None  # it has started: the next one queues anew
            config = self.project.train_config(**overrides)
            return self._finish(
                self.project.retrain(config, on_epoch=self._logger(job_id)).to_json()
            )

        self.futures[job_id] = self._pool.submit(self._leased, job_id, work)
        return job_id

    def submit_forget_retrain(self, audit_id: int) -> str:
        """Retrain production after a forget (the erasure itself is already committed)."""
        job_id = self.project.create_job(
            "forget-retrain", {"audit_id": audit_id}, trigger="forget", owner=self.owner
        )

        def work() -> dict[str, Any]:
            return self._finish(
                self.project.retrain_after_forget(audit_id, on_epoch=self._logger(job_id))
            )

        self.futures[job_id] = self._pool.submit(self._leased, job_id, work)
        return job_id

    def forget(self, user_id: str) -> dict[str, Any]:
        """Forget a user now (answered once the erasure is committed; the served model
        already swapped off a withdrawn version) and, when production used their rows,
        retrain without them as a job (``retrain_job``; None when not needed)."""
        out = self.project.forget(user_id, retrain=False)
        out["retrain_job"] = (
            self.submit_forget_retrain(out["audit_id"]) if out["needs_retrain"] else None
        )
        return out

    def _logger(self, job_id: str) -> Callable[[EpochReport], None]:
        def log(r: EpochReport) -> None:
            self.project.job_log(job_id, r.line())

        log.on_stage = lambda text: self.project.job_log(job_id, text)  # type: ignore[attr-defined]

        return log

    def shutdown(self) -> None:
        """Finish the running job; queued ones are marked failed at the next start."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
