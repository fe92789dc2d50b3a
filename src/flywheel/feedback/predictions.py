"""The prediction log: every call answered by production, and the input it was asked.

One path for every prediction, in steps the server runs apart (its micro-batcher and
background writer) and ``predict`` runs in a row: ``admit`` (the user's pseudonym,
the input as the door keeps it), the model's outputs, ``records.answer`` (the client's
answer and the log row), ``log`` (committed in one transaction).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from flywheel.context import Context
from flywheel.errors import NotFoundError
from flywheel.feedback import repo
from flywheel.feedback.records import PredictionResult, answer
from flywheel.privacy.door import Door
from flywheel.privacy.forget import subject_digest
from flywheel.privacy.identity import IdentityService
from flywheel.registry.backends import TorchBackend
from flywheel.registry.cache import ModelCache
from flywheel.store import retry_locked
from flywheel.store.journal import Journal, ReplayReport, replay
from flywheel.store.schema import AuditRecord, Prediction

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
        digests = self.ctx.blobs.put_many([r["content"] for r in rows])
        values = [
            {k: v for k, v in r.items() if k != "content"} | {"input_hash": digest}
            for r, digest in zip(rows, digests, strict=True)
        ]

        def write() -> None:
            with self.ctx.db.session() as s:
                repo.insert_predictions(s, values)

        retry_locked(write)

    @property
    def journal_dir(self) -> Path:
        return self.ctx.settings.project_dir / "journal"

    def journal(self) -> Journal:
        """A server's journal: rows on disk until committed (``prediction_log``)."""
        return Journal(self.journal_dir)

    def replay_journal(self) -> ReplayReport:
        """Commit what a killed server left in the journal (rows the database lacks;
        none of a user forgotten since), and delete it."""
        return replay(self.journal_dir, self._log_new, self._forgotten)

    def _log_new(self, rows: list[dict[str, Any]]) -> int:
        """``log`` for the rows whose ids the database does not hold; how many."""
        with self.ctx.db.session() as s:
            held = set(
                s.scalars(select(Prediction.id).where(Prediction.id.in_([r["id"] for r in rows])))
            )
        new = [r for r in rows if r["id"] not in held]
        if new:
            self.log(new)
        return len(new)

    def _forgotten(self, rows: list[dict[str, Any]]) -> set[str]:
        """The ids of rows whose user was forgotten after the row was made."""
        subjects = {subject_digest(r["user_id"]): r["user_id"] for r in rows if r["user_id"]}
        if not subjects:
            return set()
        with self.ctx.db.session() as s:
            forgets = s.execute(
                select(AuditRecord.subject, AuditRecord.created_at).where(
                    AuditRecord.action == "forget", AuditRecord.subject.in_(list(subjects))
                )
            ).all()
        last: dict[str, Any] = {}
        for subject, at in forgets:
            user = subjects[str(subject)]
            last[user] = max(at, last.get(user, at))
        return {
            r["id"] for r in rows if r["user_id"] in last and r["created_at"] <= last[r["user_id"]]
        }

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
