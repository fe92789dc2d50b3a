"""Logging predictions off the hot path: a bounded queue and one writer thread.

``put`` blocks while the queue is full: back-pressure reaches the batcher (and so the
clients) instead of memory growing without bound. The writer commits rows in batches
(one transaction each, gathering rows for up to ``linger_s`` unless someone waits for
them), retrying a busy or unreachable database; ``close`` flushes
what is queued. Until its row is committed a prediction is *pending*: feedback about
it waits for the commit (``wait_written``) rather than answering 404.

With a durable journal (``prediction_log = "durable"``) ``put`` also appends the row
to it and ``sync`` (once per batch, before its answers leave) makes it durable; a
commit deletes what it covered. Rows that cannot be written by the time the server
stops stay in the journal (or go to it, in the fast mode) for the next start to
replay, never dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from flywheel.serving.batching import drain

__all__ = ["PredictionWriter"]

log = logging.getLogger("flywheel.serving")

WriteFn = Callable[[Sequence[dict[str, Any]]], None]


class Journal(Protocol):
    """Where rows wait on disk for their commit (``flywheel.store.journal.Journal``)."""

    directory: Path

    def append(self, row: dict[str, Any]) -> None: ...
    def sync(self) -> None: ...
    def committed(self, ids: Iterable[str]) -> None: ...
    def keep(self, rows: Sequence[dict[str, Any]]) -> Path | None: ...
    def close(self) -> None: ...


class PredictionWriter:
    def __init__(
        self,
        write: WriteFn,
        *,
        max_queue: int = 10_000,
        batch_rows: int = 512,
        linger_s: float = 0.02,
        journal: Journal | None = None,
        durable: bool = False,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        if durable and journal is None:
            raise ValueError("a durable log needs a journal")
        self._write = write
        self.batch_rows = batch_rows
        self.linger_s = linger_s
        self.journal = journal
        self.durable = durable
        self.on_written = on_written
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._pending: set[str] = set()
        self._hurry = threading.Event()
        self._cond = threading.Condition()
        self._closing = False
        self.queued = 0
        self.written = 0
        self.spilled = 0
        self._thread = threading.Thread(target=self._loop, name="flywheel-writer", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self._queue.qsize()

    def put(self, row: dict[str, Any]) -> None:
        """Queue one prediction row (``row["id"]`` its id); blocks while the queue is full."""
        if self.durable:
            assert self.journal is not None
            self.journal.append(row)
        with self._cond:
            self._pending.add(row["id"])
            self.queued += 1
        if self._queue.qsize() >= self.batch_rows:
            self._hurry.set()  # a full batch is waiting: no reason to linger
        self._queue.put(row)

    def sync(self) -> None:
        """The rows put so far survive a crash (durable mode; raises OSError)."""
        if self.durable:
            assert self.journal is not None
            self.journal.sync()

    def is_pending(self, prediction_id: str) -> bool:
        with self._cond:
            return prediction_id in self._pending

    def wait_written(self, prediction_id: str, timeout: float = 30.0) -> bool:
        """Wait until the prediction's row is committed; False if it is not by ``timeout``."""
        with self._cond:
            if prediction_id not in self._pending:
                return True
        self._nudge()
        with self._cond:
            return self._cond.wait_for(lambda: prediction_id not in self._pending, timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row queued before this call is committed (or spilled)."""
        with self._cond:
            target = self.queued
            if self.written + self.spilled >= target:
                return True
        self._nudge()
        with self._cond:
            return self._cond.wait_for(lambda: self.written + self.spilled >= target, timeout)

    def _nudge(self) -> None:
        """Someone waits for a row: commit what is gathered now, without lingering."""
        self._hurry.set()

    def close(self) -> None:
        """Write everything queued, then stop."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
        self._queue.put(None)
        self._hurry.set()
        self._thread.join()
        if self.journal is not None:
            self.journal.close()

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            # Linger a moment, asleep (not woken by each new row), so that one commit
            # takes many predictions. A reader waiting, a queue filling up, or the stop
            # cuts it short.
            self._hurry.wait(self.linger_s)
            self._hurry.clear()
            rows = [first]
            stop = drain(self._queue, rows, self.batch_rows)
            self._commit(rows)

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            try:
                self._write(rows)
                done = "written"
                break
            except Exception as exc:
                if self._closing and attempt >= 5:
                    self._spill(rows, exc)
                    done = "spilled"
                    break
                log.warning("could not log %d predictions (try %d): %s", len(rows), attempt, exc)
                time.sleep(delay)  # back off: the database is busy or away
                delay = min(delay * 2, 2.0)
        if done == "written":
            if self.journal is not None:
                self.journal.committed(r["id"] for r in rows)
            if self.on_written is not None:
                self.on_written(len(rows))
        with self._cond:
            if done == "written":
                self.written += len(rows)
            else:
                self.spilled += len(rows)
            self._pending.difference_update(r["id"] for r in rows)
            self._cond.notify_all()

    def _spill(self, rows: list[dict[str, Any]], exc: Exception) -> None:
        if self.journal is None:
            log.error("lost %d prediction rows at shutdown: %s", len(rows), exc)
            return
        kept = self.journal.keep(rows)
        log.error(
            "the database refused %d prediction rows at shutdown (%s): kept in %s for "
            "the next start to replay",
            len(rows),
            exc,
            kept or self.journal.directory,
        )
