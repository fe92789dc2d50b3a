"""The server's prediction path: the production backend, the micro-batcher, the log writer.

``predict`` pins the current backend (model version), hands the input to the batcher
and awaits its row of the batch; the batcher's worker queues the log row before the
client hears the answer. ``refresh`` loads a newly promoted version *before* swapping
it in, so no request sees a half-loaded model; requests already queued finish on the
version they started with. ``close`` (at shutdown, after the server has stopped
taking requests and drained the ones in flight) runs what is queued and flushes the
log.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from flywheel.errors import FlywheelError, ModelError
from flywheel.project import (
    FeedbackIn,
    FeedbackResult,
    PredictionResult,
    Project,
)
from flywheel.serving.backends import Backend, load_backend
from flywheel.serving.batching import BatchResult, GroupCommit, MicroBatcher
from flywheel.serving.metrics import Metrics
from flywheel.serving.writer import PredictionWriter
from flywheel.store.schema import utcnow

__all__ = ["Predictor"]

log = logging.getLogger("flywheel.serving")


class Predictor:
    def __init__(
        self, project: Project, metrics: Metrics, *, backend: Backend | None = None
    ) -> None:
        st = project.settings
        self.project = project
        self.metrics = metrics
        self._fixed = backend is not None  # a test's backend: never swapped
        self._backend: Backend | None = backend
        self._swap = threading.Lock()
        self.writer = PredictionWriter(
            self._write,
            max_queue=st.log_queue_size,
            batch_rows=st.log_batch_rows,
            spill_dir=st.project_dir / "spill",
            on_written=lambda n: metrics.log_written.inc(n),
        )
        self.batcher = MicroBatcher(
            max_batch=st.max_batch_size,
            max_wait_s=st.max_batch_wait_ms / 1000.0,
            on_result=self._log,
            on_batch=lambda n: metrics.batch_size.observe(n),
        )
        # Feedback: committed before it is acknowledged, many answers per transaction.
        self.feedback_commit = GroupCommit(
            project.record_feedback_many, max_batch=st.log_batch_rows, name="flywheel-feedback"
        )
        # Feedback about a prediction still in the writer's queue waits for its commit.
        project.prediction_log = self.writer
        metrics.queue_depth.labels("batch").set_function(self.batcher.depth)
        metrics.queue_depth.labels("log").set_function(self.writer.depth)
        metrics.queue_depth.labels("feedback").set_function(self.feedback_commit.depth)

    # -- the model in service ------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        backend = self._backend or self.refresh()
        if backend is None:
            raise ModelError("no production model yet; train one with `flywheel train`")
        return backend

    def refresh(self) -> Backend | None:
        """Serve the production version; a new one is loaded before it is swapped in."""
        if self._fixed:
            return self._backend
        with self._swap:
            loaded = self.project.refresh_model()
            if loaded is None:  # no production (none yet, or it was withdrawn): serve none
                self._backend = None
                return None
            current = self._backend
            if current is not None and current.version == loaded.version:
                return current
            info = self.project.version_info(loaded.version)
            fresh = load_backend(
                loaded,
                self.project.settings.serving_backend,
                artifact_dir=Path(info.artifact_dir),
                threads=self.project.settings.serving_threads,
            )
            self._backend = fresh  # one reference assignment: the swap
            self.metrics.production_version.set(fresh.version)
            log.info("serving v%d on %s", fresh.version, fresh.name)
            return fresh

    # -- predictions ----------------------------------------------------------------------

    async def predict(self, content: bytes, user_id: str | None) -> PredictionResult:
        user_id = self.project.pseudonym(user_id)
        if self.project.scrubs_inputs:  # personal data never reaches the model or the store
            if self.project.task.modality == "text":  # Presidio: ~2 ms, off the event loop
                content = await run_in_threadpool(self.project.at_the_door, content)
            else:  # an image's metadata: a walk over its segments, microseconds
                content = self.project.at_the_door(content)
        backend = self.backend
        started = time.perf_counter()
        result: PredictionResult = await self.batcher.run(
            backend, content, (content, user_id, started)
        )
        return result

    def _log(self, context: Any, r: BatchResult) -> PredictionResult:
        """In the batcher's thread: build the answer and queue its log row."""
        content, user_id, started = context
        latency_ms = (time.perf_counter() - started) * 1000.0
        backend = r.backend
        pid = str(uuid.uuid4())
        if not backend.labels:
            result = PredictionResult(pid, backend.version, latency_ms, value=float(r.output))
        else:
            out: np.ndarray = r.output
            probabilities = {lab: float(p) for lab, p in zip(backend.labels, out, strict=True)}
            label = backend.labels[int(out.argmax())]
            result = PredictionResult(pid, backend.version, latency_ms, label, probabilities)
        self.writer.put(
            {
                "id": pid,
                "model_version": backend.version,
                "user_id": user_id,
                "content": content,
                "label": result.label,
                "value": result.value,
                "probabilities": result.probabilities or {},
                "latency_ms": latency_ms,
                "created_at": utcnow(),
            }
        )
        return result

    def _write(self, rows: Sequence[dict[str, Any]]) -> None:
        self.project.log_predictions(rows)

    async def feedback(self, answer: FeedbackIn) -> FeedbackResult:
        """Record an answer; returns once its row is committed (raises its error)."""
        out: FeedbackResult | FlywheelError = await self.feedback_commit.run(answer)
        if isinstance(out, FlywheelError):
            raise out
        return out

    def close(self) -> None:
        self.batcher.close()
        self.feedback_commit.close()  # before the writer: feedback may wait on its rows
        self.writer.close()
        self.project.prediction_log = None
