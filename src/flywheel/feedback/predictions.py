"""The prediction log: every call answered by production, and the input it was asked.

One path for every prediction, in steps the server runs apart (its micro-batcher and
background writer) and ``predict`` runs in a row: ``admit`` (the user's pseudonym,
the input as the door keeps it), the model's outputs, ``records.answer`` (the client's
answer and the log row), ``log`` (committed in one transaction).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flywheel.context import Context
from flywheel.errors import NotFoundError
from flywheel.feedback import repo
from flywheel.feedback.records import PredictionResult, answer
from flywheel.privacy.door import Door
from flywheel.privacy.identity import IdentityService
from flywheel.registry.backends import TorchBackend
from flywheel.registry.cache import ModelCache
from flywheel.store import retry_locked
from flywheel.store.schema import Prediction

__all__ = ["PredictionLog"]


class PredictionLog:
    def __init__(
        self, ctx: Context, identity: IdentityService, door: Door, cache: ModelCache
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self.door = door
        self.cache = cache

    def admit(self, content: bytes, user_id: str | None) -> tuple[bytes, str | None]:
        """(the input as kept, the user's pseudonym): personal data never reaches the
        model or the store."""
        pseudonym = self.identity.pseudonym(user_id)  # a bad id is refused before any work
        return self.door.keep(content), pseudonym

    def log(self, rows: Sequence[dict[str, Any]]) -> None:
        """Commit predictions (rows of ``answer``) in one transaction; their inputs go to
        the blob folder first."""
        digests = [self.ctx.blobs.put(r["content"]) for r in rows]
        values = [
            {k: v for k, v in r.items() if k != "content"} | {"input_hash": digest}
            for r, digest in zip(rows, digests, strict=True)
        ]

        def write() -> None:
            with self.ctx.db.session() as s:
                repo.insert_predictions(s, values)

        retry_locked(write)

    def predict(self, content: bytes, user_id: str | None = None) -> PredictionResult:
        """Predict one input (the stored form of the task's input) and log the call."""
        content, pseudonym = self.admit(content, user_id)
        started = time.perf_counter()
        # In process, torch answers (a server answers with its configured backend).
        backend = TorchBackend(self.cache.current().loaded)
        out = backend.run(backend.decode(content)[None])[0]
        latency_ms = (time.perf_counter() - started) * 1000.0
        result, row = answer(
            backend.version,
            backend.labels,
            out,
            content=content,
            user_id=pseudonym,
            latency_ms=latency_ms,
        )
        self.log([row])
        return result

    def stored_input(self, prediction_id: str) -> bytes:
        """The input a logged prediction was asked (as the door kept it)."""
        self.ctx.wait_written(prediction_id)
        with self.ctx.db.session() as s:
            pred = s.get(Prediction, prediction_id)
            if pred is None:
                raise NotFoundError("prediction", prediction_id)
            digest = pred.input_hash
        return self.ctx.blobs.get(digest)
