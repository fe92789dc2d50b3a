"""The prediction log's journal: rows on disk before their answers leave.

With ``prediction_log = "durable"`` (the default) the server appends each prediction's
log row to a segment file in ``<project>/journal/`` and fsyncs it, once per batch,
before any answer of the batch is sent. The background writer then commits the rows to
the database as before; a segment is deleted once every row in it is committed. A
process killed at any point leaves, at most, segments whose rows are in the database
already (the replay skips them: no duplicates) or not yet (the replay commits them: no
loss); a torn last record was never acknowledged and is dropped. The next process that
opens the project replays what is left (``replay``).

With ``prediction_log = "fast"`` nothing is written before the answer: a crash loses the
rows still in the writer's queue, those answered since its last commit (some 20 ms of
traffic; more while the database is slow or away).
In both modes rows the database refuses at shutdown are kept in a segment for replay.

Each record is one line, ``<crc32 hex> <json>``; bytes and datetimes are tagged so that
a row reads back exactly as it was written. A segment's owner holds an exclusive
``flock`` on it while it lives: a replay or a scrub (a forget) in another process
leaves live segments alone.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["Journal", "ReplayReport", "read_segment", "replay", "scrub"]

log = logging.getLogger("flywheel.store")

SUFFIX = ".journal"


def encode(row: dict[str, Any]) -> bytes:
    plain = {
        k: {"$bytes": base64.b64encode(v).decode()}
        if isinstance(v, bytes)
        else {"$time": v.isoformat()}
        if isinstance(v, datetime)
        else v
        for k, v in row.items()
    }
    body = json.dumps(plain, separators=(",", ":"), allow_nan=False).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _tagged(v: Any) -> Any:
    if isinstance(v, dict) and len(v) == 1:
        if "$bytes" in v:
            return base64.b64decode(v["$bytes"])
        if "$time" in v:
            return datetime.fromisoformat(v["$time"])
    return v


def decode(line: bytes) -> dict[str, Any] | None:
    """A record's row; None for a record that is torn or damaged."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        plain = json.loads(body)
    except ValueError:
        return None
    if not isinstance(plain, dict) or not isinstance(plain.get("id"), str):
        return None
    return {k: _tagged(v) for k, v in plain.items()}


def _lock(f: BinaryIO) -> bool:
    """Take the segment's lock; False when a live process holds it."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Segment:
    path: Path
    file: BinaryIO
    opened: float
    size: int = 0
    outstanding: int = 0  # rows in it not yet committed
    sealed: bool = False


class Journal:
    """Segments of rows not yet committed, owned by this process.

    ``append`` and ``sync`` run in the batcher's thread (one ``sync`` per batch, before
    its answers), ``committed`` in the writer's; a lock keeps them apart. A segment is
    sealed after ``segment_s`` seconds or ``segment_bytes``, and deleted (with its lock)
    as soon as every row in it is committed.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_s: float = 1.0,
        segment_bytes: int = 8 << 20,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        self.segment_s = segment_s
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._current: _Segment | None = None
        self._segments: dict[str, _Segment] = {}
        self._where: dict[str, _Segment] = {}
        self._dirty: dict[str, _Segment] = {}  # written since the last sync
        self.appended = 0
        self.synced = 0

    def _open(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        path = self.directory / name
        # Made under another name, locked, then named: a replay elsewhere never sees it
        # unlocked (it would take it for a dead process's).
        tmp = path.with_suffix(".new")
        f = tmp.open("xb")
        _lock(f)
        tmp.rename(path)
        if self.fsync:
            _sync_dir(self.directory)  # the file itself survives a power cut too
        seg = _Segment(path, f, time.monotonic())
        self._segments[name] = seg
        return seg

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (to the OS; ``sync`` makes it durable)."""
        record = encode(row)
        with self._lock:
            seg = self._current
            if seg is not None and (
                seg.size >= self.segment_bytes or time.monotonic() - seg.opened >= self.segment_s
            ):
                seg.sealed = True
                self._current = seg = None
            if seg is None:
                self._current = seg = self._open()
            seg.file.write(record)
            seg.size += len(record)
            seg.outstanding += 1
            self._where[row["id"]] = seg
            self._dirty[seg.path.name] = seg
            self.appended += 1

    def sync(self) -> None:
        """Make every appended row durable (raises OSError when the disk refuses)."""
        with self._lock:
            if not self._dirty:
                return
            # Only the segments written since (the current one, and one just sealed).
            for seg in self._dirty.values():
                if not seg.file.closed:
                    seg.file.flush()
                    if self.fsync:
                        os.fsync(seg.file.fileno())
            self._dirty.clear()
            self.synced = self.appended

    def committed(self, ids: Iterable[str]) -> None:
        """These rows are in the database: segments left with none outstanding go."""
        with self._lock:
            touched = set()
            for pid in ids:
                seg = self._where.pop(pid, None)
                if seg is not None:
                    seg.outstanding -= 1
                    touched.add(seg.path.name)
            for name in touched:
                seg = self._segments[name]
                if seg.outstanding == 0:
                    self._drop(seg)

    def _drop(self, seg: _Segment) -> None:
        if seg is self._current:
            self._current = None
        del self._segments[seg.path.name]
        self._dirty.pop(seg.path.name, None)
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()
        seg.file.close()  # the lock goes with it

    def keep(self, rows: Sequence[dict[str, Any]]) -> Path | None:
        """Rows that could not be committed at shutdown: in the durable mode they are on
        disk already; otherwise they go to a segment of their own, synced. Either way
        the next start replays them."""
        with self._lock:
            fresh = [r for r in rows if r["id"] not in self._where]
            if not fresh:
                return None
            seg = self._open()
            seg.sealed = True
            for r in fresh:
                record = encode(r)
                seg.file.write(record)
                seg.size += len(record)
            seg.file.flush()
            os.fsync(seg.file.fileno())
            return seg.path

    def close(self) -> None:
        """Release every segment: the ones still holding rows stay for the replay."""
        with self._lock:
            for seg in list(self._segments.values()):
                if seg.outstanding == 0 and not seg.sealed:
                    self._drop(seg)
                else:
                    seg.file.flush()
                    seg.file.close()
            self._segments.clear()
            self._where.clear()
            self._current = None


def read_segment(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(the rows of a segment, how many records were torn or damaged)."""
    rows: list[dict[str, Any]] = []
    bad = 0
    with path.open("rb") as f:
        for line in f:
            row = decode(line)
            if row is None:
                bad += 1
            else:
                rows.append(row)
    return rows, bad


@contextlib.contextmanager
def _orphans(directory: Path) -> Iterator[list[tuple[Path, BinaryIO]]]:
    """The segments no live process holds, locked for the caller."""
    held: list[tuple[Path, BinaryIO]] = []
    try:
        for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []:
            try:
                f: BinaryIO = path.open("rb")
            except FileNotFoundError:  # its owner just deleted it
                continue
            if _lock(f) and path.exists():
                held.append((path, f))
            else:
                f.close()
        yield held
    finally:
        for _, f in held:
            f.close()


@dataclass
class ReplayReport:
    segments: int = 0
    rows: int = 0
    committed: int = 0  # rows the database did not hold yet
    torn: int = 0
    forgotten: int = 0  # rows of users forgotten since: dropped, never written back
    files: list[str] = field(default_factory=list)


def replay(
    directory: Path,
    commit: Callable[[list[dict[str, Any]]], int],
    forgotten: Callable[[list[dict[str, Any]]], set[str]],
    *,
    batch: int = 512,
) -> ReplayReport:
    """Commit the rows of segments a dead process left, then delete them.

    ``commit(rows)`` writes the rows the database lacks (by id) and says how many;
    ``forgotten(rows)`` names the ids among them of users forgotten after the row was
    made, which are dropped."""
    report = ReplayReport()
    with _orphans(directory) as segments:
        for path, _ in segments:
            rows, bad = read_segment(path)
            drop = forgotten(rows) if rows else set()
            keep = [r for r in rows if r["id"] not in drop]
            for i in range(0, len(keep), batch):
                report.committed += commit(keep[i : i + batch])
            report.segments += 1
            report.rows += len(rows)
            report.torn += bad
            report.forgotten += len(drop)
            report.files.append(path.name)
            path.unlink()
    if report.segments:
        log.warning(
            "replayed the prediction log's journal: %d rows from %d segments, %d of them "
            "not yet in the database (%d torn records dropped, %d of forgotten users)",
            report.rows,
            report.segments,
            report.committed,
            report.torn,
            report.forgotten,
        )
    return report


def scrub(directory: Path, pseudonym: str) -> int:
    """Drop a user's rows from the segments no live process holds (a forget); how many.
    A live segment is left to its owner, who deletes it once committed; a replay of it
    after a crash drops them (``forgotten``)."""
    removed = 0
    with _orphans(directory) as segments:
        for path, _ in segments:
            rows, _bad = read_segment(path)
            kept = [r for r in rows if r.get("user_id") != pseudonym]
            if len(kept) == len(rows):
                continue
            removed += len(rows) - len(kept)
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as f:
                f.writelines(encode(r) for r in kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    return removed
