"""Adaptive micro-batching: concurrent requests share one forward pass.

One worker thread takes requests off a queue. It runs a batch as soon as it holds
``max_batch`` requests, or when ``max_wait_s`` has passed since the oldest one came in.
Under light load (the last batch held one request and nothing else is queued) it does
not wait at all, so a lone request is never held back for company that is not coming.
Each request is pinned to the backend (model version) it started with; a batch only
mixes requests of the same backend, so a hot swap never changes a request's model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.errors import InputError, ModelError
from flywheel.registry import Backend

__all__ = ["BatchResult", "GroupCommit", "MicroBatcher"]

log = logging.getLogger("flywheel.serving")


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch."""

    output: np.ndarray  # its row of probabilities, or a 0-d value
    backend: Backend
    batch_size: int
    queued_s: float  # from submit to the start of its batch
    run_s: float  # the batch's decode + forward time


@dataclass
class _Item:
    backend: Backend
    content: bytes
    future: Future[Any] | asyncio.Future[Any]
    context: Any
    loop: asyncio.AbstractEventLoop | None = None  # set: an asyncio future of that loop
    #: the model's input, already decoded (an Open Inference Protocol tensor): not decoded
    array: np.ndarray | None = None
    submitted: float = field(default_factory=time.perf_counter)


#: (the request's future, the event loop it belongs to or None, ok, result or exception)
Outcome = tuple[Future[Any] | asyncio.Future[Any], asyncio.AbstractEventLoop | None, bool, Any]


def _settle(outcomes: list[Outcome]) -> None:
    for fut, _, ok, value in outcomes:
        if fut.done():  # the request was cancelled (client gone)
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def resolve(outcomes: list[Outcome]) -> None:
    """Answer the waiting requests: thread futures here, asyncio futures with one call
    into each event loop (not one wake-up per request)."""
    by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[Outcome]]] = {}
    for outcome in outcomes:
        loop = outcome[1]
        if loop is None:
            _settle([outcome])
        else:
            by_loop.setdefault(id(loop), (loop, []))[1].append(outcome)
    for loop, group in by_loop.values():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
            loop.call_soon_threadsafe(_settle, group)


def drain(q: queue.SimpleQueue[Any] | queue.Queue[Any], batch: list[Any], limit: int) -> bool:
    """Add what ``q`` holds now to ``batch``, up to ``limit`` items, without waiting.

    True when the stop sentinel (None) was met: the caller runs ``batch`` and stops.
    """
    while len(batch) < limit:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            return False
        if nxt is None:
            return True
        batch.append(nxt)
    return False


# Called in the worker thread with (item context, result); what it returns resolves the
# request's future. The place to log the prediction: queued before the client hears.
OnResult = Callable[[Any, BatchResult], Any]


def _fits(backend: Backend, item: _Item) -> np.ndarray:
    """An input given decoded, if it has the shape of the backend's input."""
    assert item.array is not None
    want = tuple(getattr(backend, "input_shape", item.array.shape))
    if item.array.shape != want:
        raise InputError(
            f"v{backend.version} takes inputs of shape {list(want)}; got {list(item.array.shape)}"
        )
    return item.array


class MicroBatcher:
    def __init__(
        self,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        on_result: OnResult | None = None,
        on_batch: Callable[[int], None] | None = None,
        before_answers: Callable[[], None] | None = None,
    ) -> None:
        """``before_answers``: run after a batch's ``on_result`` calls and before any of
        its answers is given (the durable log's sync); if it fails, so do they."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.on_result = on_result
        self.on_batch = on_batch
        self.before_answers = before_answers
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._last_size = 1
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="flywheel-batcher", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, backend: Backend, content: bytes, context: Any = None) -> Future[Any]:
        """Queue one input; the future resolves to ``on_result(context, BatchResult)``
        (the BatchResult itself without ``on_result``) or to the input's error."""
        fut: Future[Any] = Future()
        self._put(_Item(backend, content, fut, context))
        return fut

    async def run(
        self,
        backend: Backend,
        content: bytes,
        context: Any = None,
        *,
        array: np.ndarray | None = None,
    ) -> Any:
        """``submit`` for a coroutine: the answer, with one wake-up of the event loop
        per batch (not one per request). ``array``: the input already decoded (its
        shape is checked against the backend's ``input_shape``)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._put(_Item(backend, content, fut, context, loop, array))
        return await fut

    def _put(self, item: _Item) -> None:
        with self._lock:
            if self._closed:
                raise ModelError("the server is shutting down")
            self._queue.put(item)

    def close(self) -> None:
        """Run what is queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    # -- the worker ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._run(batch)
            if stop:  # the sentinel comes last: submit refuses once closed
                return

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        batch = [first]
        deadline = first.submitted + self.max_wait_s
        # Light load: the last batch was a lone request; do not wait for company.
        patient = self._last_size > 1
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if not patient or remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, items: list[_Item]) -> None:
        self._last_size = len(items)
        if self.on_batch is not None:
            self.on_batch(len(items))
        # Requests pinned to different versions (a swap mid-queue) run separately.
        groups: dict[int, list[_Item]] = {}
        for it in items:
            groups.setdefault(id(it.backend), []).append(it)
        for group in groups.values():
            self._run_group(group)

    def _run_group(self, items: list[_Item]) -> None:
        started = time.perf_counter()
        backend = items[0].backend
        outcomes: list[Outcome] = []
        ok: list[_Item] = []
        rows: list[np.ndarray] = []
        for it in items:
            try:
                rows.append(backend.decode(it.content) if it.array is None else _fits(backend, it))
                ok.append(it)
            except Exception as exc:  # this input is bad; the others still run
                outcomes.append((it.future, it.loop, False, exc))
        if ok:
            try:
                out = backend.run(np.stack(rows))
            except Exception as exc:
                log.exception("a batch of %d failed on v%d", len(ok), backend.version)
                outcomes += [(it.future, it.loop, False, exc) for it in ok]
            else:
                run_s = time.perf_counter() - started
                for k, it in enumerate(ok):
                    result = BatchResult(out[k], backend, len(ok), started - it.submitted, run_s)
                    try:
                        answer = (
                            result if self.on_result is None else self.on_result(it.context, result)
                        )
                    except Exception as exc:
                        outcomes.append((it.future, it.loop, False, exc))
                    else:
                        outcomes.append((it.future, it.loop, True, answer))
        if self.before_answers is not None and any(ok for _, _, ok, _ in outcomes):
            try:
                self.before_answers()
            except Exception as exc:
                log.exception("the answers of a batch could not be made durable")
                failed = ModelError(f"the prediction log cannot be kept on disk: {exc}")
                outcomes = [
                    (f, lp, False, v if not good else failed) for f, lp, good, v in outcomes
                ]
        resolve(outcomes)


class GroupCommit:
    """Writes that must be committed before they are acknowledged, many per transaction.

    Requests queue while the worker commits; it then takes everything queued (up to
    ``max_batch``) into one call of ``commit``, which returns one result or exception
    per item. Each request is answered only after that commit: the durability of one
    commit per request, at the cost of one per batch.
    """

    def __init__(
        self,
        commit: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int = 256,
        name: str = "flywheel-commit",
    ) -> None:
        self._commit = commit
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Any, asyncio.Future[Any], Any] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self._queue.qsize()

    async def run(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._closed:
                raise ModelError("the server is shutting down")
            self._queue.put((item, fut, loop))
        return await fut

    def close(self) -> None:
        """Commit what is queued, then stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = drain(self._queue, batch, self.max_batch)
            try:
                results: Sequence[Any] = self._commit([item for item, _, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} items")
            except Exception as exc:
                log.exception("a group commit of %d items failed", len(batch))
                results = [exc] * len(batch)
            resolve(
                [
                    (fut, loop, not isinstance(result, BaseException), result)
                    for (_, fut, loop), result in zip(batch, results, strict=True)
                ]
            )
