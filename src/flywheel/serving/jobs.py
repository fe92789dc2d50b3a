"""Background jobs of a serving process (retrains), one at a time, off the request path."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flywheel.errors import RegistryError
from flywheel.project import Project
from flywheel.training import EpochReport

__all__ = ["JobRunner"]


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

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        if self.after_work is not None:
            self.after_work()
        return result

    def submit_retrain(self, overrides: dict[str, Any]) -> str:
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
            job_id = self.project.create_job("retrain", overrides)
            self._waiting = (job_id, dict(overrides))

        def work() -> dict[str, Any]:
            with self._lock:
                if self._waiting is not None and self._waiting[0] == job_id:
                    self._waiting = None  # it has started: the next one queues anew
            config = self.project.train_config(**overrides)
            return self._finish(
                self.project.retrain(config, on_epoch=self._logger(job_id)).to_json()
            )

        self.futures[job_id] = self._pool.submit(self.project.run_job, job_id, work)
        return job_id

    def submit_forget_retrain(self, audit_id: int) -> str:
        """Retrain production after a forget (the erasure itself is already committed)."""
        job_id = self.project.create_job("forget-retrain", {"audit_id": audit_id})

        def work() -> dict[str, Any]:
            return self._finish(
                self.project.retrain_after_forget(audit_id, on_epoch=self._logger(job_id))
            )

        self.futures[job_id] = self._pool.submit(self.project.run_job, job_id, work)
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
            self.project.job_log(
                job_id,
                f"epoch {r.epoch}/{r.epochs}: loss {r.train_loss:.4f}, "
                f"val_loss {r.val_loss:.4f}, val_metric {r.val_metric:.4f}",
            )

        return log

    def shutdown(self) -> None:
        """Finish the running job; queued ones are marked failed at the next start."""
        self._pool.shutdown(wait=True, cancel_futures=True)
