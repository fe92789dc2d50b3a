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
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from flywheel.errors import FlywheelError
from flywheel.feedback.records import FeedbackIn, FeedbackResult, PredictionResult, answer
from flywheel.project import Project
from flywheel.registry import Backend
from flywheel.registry.cache import Served
from flywheel.serving.batching import BatchResult, GroupCommit, MicroBatcher
from flywheel.serving.metrics import Metrics
from flywheel.serving.writer import PredictionWriter

__all__ = ["Predictor"]

log = logging.getLogger("flywheel.serving")


class Predictor:
    def __init__(
        self, project: Project, metrics: Metrics, *, backend: Backend | None = None
    ) -> None:
        st = project.settings
        self.project = project
        self.metrics = metrics
        self._fixed = backend  # a test's backend: never swapped
        self._shown: int | None = None  # the version the server's log last named
        #: called with the version after every swap, under the model cache's lock: each
        #: must return at once (Ray Serve's replicas wake a thread to tell the others)
        self.swap_listeners: list[Callable[[int], object]] = []
        self.writer = PredictionWriter(
            self._write,
            max_queue=st.log_queue_size,
            batch_rows=st.log_batch_rows,
            journal=project.prediction_journal(),
            durable=st.prediction_log == "durable",
            on_written=lambda n: metrics.log_written.inc(n),
        )
        self.batcher = MicroBatcher(
            max_batch=st.max_batch_size,
            max_wait_s=st.max_batch_wait_ms / 1000.0,
            on_result=self._log,
            on_batch=lambda n: metrics.batch_size.observe(n),
            # durable: a batch's log rows are on disk before any of its answers leaves
            before_answers=self.writer.sync,
        )
        # Feedback: committed before it is acknowledged, many answers per transaction.
        self.feedback_commit = GroupCommit(
            project.record_feedback_many, max_batch=st.log_batch_rows, name="flywheel-feedback"
        )
        # Feedback about a prediction still in the writer's queue waits for its commit.
        project.prediction_log = self.writer
        if backend is None:  # the project's one model cache, with the configured backend
            project.cache.serve_with(
                st.serving_backend, threads=st.serving_threads, on_swap=self._swapped
            )
        metrics.queue_depth.labels("batch").set_function(self.batcher.depth)
        metrics.queue_depth.labels("log").set_function(self.writer.depth)
        metrics.queue_depth.labels("feedback").set_function(self.feedback_commit.depth)

    # -- the model in service ------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self._fixed or self.project.cache.current().backend

    def refresh(self) -> Backend | None:
        """Serve the production version; a new one is loaded before it is swapped in."""
        if self._fixed is not None:
            return self._fixed
        served = self.project.cache.refresh()
        return None if served is None else served.backend

    def serving_version(self) -> int | None:
        """The version requests are answered with now (None: none loaded)."""
        if self._fixed is not None:
            return self._fixed.version
        held = self.project.cache.held
        return None if held is None else held.version

    def _swapped(self, served: Served) -> None:
        self.metrics.production_version.set(served.version)
        before, self._shown = self._shown, served.version
        if before is None:
            log.info("serving v%d (%s backend)", served.version, served.backend.name)
        elif before != served.version:
            log.info(
                "production v%d -> v%d (%s); serving it (%s backend)",
                before, served.version, self._why_moved(served.version), served.backend.name,
            )  # fmt: skip
        for listener in self.swap_listeners:
            listener(served.version)

    def _why_moved(self, version: int) -> str:
        """The newest move of production to ``version``: its action and reason."""
        moved: str = self.project.production_state(version)["moved"]
        return moved

    # -- predictions ----------------------------------------------------------------------

    async def predict(
        self, content: bytes, user_id: str | None, *, array: np.ndarray | None = None
    ) -> PredictionResult:
        """Answer one input (its stored form) and log it. ``array``: the model's input,
        already decoded from ``content`` (the model runs on it; ``content`` is kept)."""
        user_id = self.project.pseudonym(user_id)
        if self.project.scrubs_inputs:  # personal data never reaches the model or the store
            if self.project.task.modality == "text":  # Presidio: ~2 ms, off the event loop
                content = await run_in_threadpool(self.project.at_the_door, content)
            else:  # an image's metadata: a walk over its segments, microseconds
                content = self.project.at_the_door(content)
        backend = self.backend
        started = time.perf_counter()
        result: PredictionResult = await self.batcher.run(
            backend, content, (content, user_id, started), array=array
        )
        return result

    def _log(self, context: Any, r: BatchResult) -> PredictionResult:
        """In the batcher's thread: build the answer and queue its log row."""
        content, user_id, started = context
        latency_ms = (time.perf_counter() - started) * 1000.0
        backend = r.backend
        result, row = answer(
            backend.version,
            backend.labels,
            r.output,
            content=content,
            user_id=user_id,
            latency_ms=latency_ms,
        )
        self.writer.put(row)
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
        if self._fixed is None:
            self.project.cache.stop_serving()
