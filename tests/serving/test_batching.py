"""The serving path's parts: micro-batching, the bounded prediction log, backends."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flywheel.errors import InputError, ModelError
from flywheel.registry import FakeBackend, load_backend
from flywheel.serving.batching import BatchResult, MicroBatcher
from flywheel.serving.writer import PredictionWriter
from flywheel.store.journal import Journal, read_segment


class Gate:
    """A backend wrapper whose first run waits until released (queues build up behind it)."""

    def __init__(self, inner: FakeBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.version = inner.version
        self.labels = inner.labels
        self.release = threading.Event()
        self.entered = threading.Event()

    def decode(self, content: bytes) -> np.ndarray:
        if content == b"bad":
            raise InputError("unreadable input")
        return self.inner.decode(content)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(30)
        return self.inner.run(x)


def test_requests_queued_behind_a_busy_model_share_one_batch() -> None:
    gate = Gate(FakeBackend(1, ["a", "b"], label="b"))
    batcher = MicroBatcher(max_batch=8, max_wait_s=0.0)
    first = batcher.submit(gate, b"x0")
    assert gate.entered.wait(30)  # the lone first request runs at once, alone
    rest = [batcher.submit(gate, f"x{i}".encode()) for i in range(1, 12)]
    gate.release.set()
    results = [f.result(30) for f in [first, *rest]]
    batcher.close()
    # 1 alone, then the 11 that queued meanwhile in batches of at most 8.
    assert gate.inner.batches == [1, 8, 3]
    assert [r.batch_size for r in results] == [1] + [8] * 8 + [3] * 3
    assert all(isinstance(r, BatchResult) and r.output.argmax() == 1 for r in results)


def test_a_lone_request_is_not_held_for_company() -> None:
    backend = FakeBackend(1, ["a"])
    # A minute's wait allowed: a lone request under light load must not use it.
    batcher = MicroBatcher(max_batch=32, max_wait_s=60.0)
    for _ in range(3):
        assert batcher.submit(backend, b"x").result(timeout=20).batch_size == 1
    batcher.close()


def test_a_batch_never_mixes_model_versions_and_a_bad_input_fails_alone() -> None:
    old = Gate(FakeBackend(1, ["a", "b"], label="a"))
    new = FakeBackend(2, ["a", "b"], label="b")
    batcher = MicroBatcher(max_batch=64, max_wait_s=0.0)
    blocker = batcher.submit(old, b"x")
    assert old.entered.wait(30)
    mixed: list[tuple[int, Future[Any]]] = []
    for i in range(10):
        backend = old if i % 2 else new
        mixed.append((backend.version, batcher.submit(backend, b"bad" if i == 3 else b"ok")))
    old.release.set()
    blocker.result(30)
    for i, (version, fut) in enumerate(mixed):
        if i == 3:
            with pytest.raises(InputError, match="unreadable"):
                fut.result(30)
            continue
        r = fut.result(30)
        assert r.backend.version == version  # each request ran on the model it started with
        assert r.output.argmax() == (0 if version == 1 else 1)
    batcher.close()
    assert sum(old.inner.batches) == 1 + 4  # five old-version requests, one of them bad
    assert sum(new.batches) == 5


def test_close_runs_what_is_queued_and_then_refuses() -> None:
    gate = Gate(FakeBackend(1, ["a"]))
    batcher = MicroBatcher(max_batch=4, max_wait_s=0.0)
    futs = [batcher.submit(gate, b"x") for _ in range(9)]
    assert gate.entered.wait(30)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.release.set()
    closer.join(30)
    assert all(f.result(0).batch_size >= 1 for f in futs)
    with pytest.raises(Exception, match="shutting down"):
        batcher.submit(gate, b"x")


def _rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "content": b"\x00\x01"} for i in range(start, start + n)]


def test_the_log_queue_pushes_back_instead_of_growing() -> None:
    release = threading.Event()
    written: list[str] = []
    seen_depth: list[int] = []

    def write(rows: Sequence[dict[str, Any]]) -> None:
        assert release.wait(30)
        written.extend(r["id"] for r in rows)

    writer = PredictionWriter(write, max_queue=3, batch_rows=2)
    writer.put(_rows(1)[0])  # taken by the writer, which then blocks in write()
    while writer.depth() or not writer.is_pending("p0"):
        pass
    for row in _rows(3, 1):  # fills the queue
        writer.put(row)
    producer = threading.Thread(target=lambda: [writer.put(r) for r in _rows(4, 4)])
    producer.start()
    producer.join(0.2)
    # The producer is held at the full queue, not buffering without bound.
    assert producer.is_alive()
    seen_depth.append(writer.depth())
    assert seen_depth == [3]
    assert writer.is_pending("p3") and not writer.is_pending("p7")
    release.set()
    producer.join(30)
    writer.close()
    assert sorted(written, key=lambda s: int(s[1:])) == [f"p{i}" for i in range(8)]
    assert writer.written == 8 and writer.depth() == 0
    assert not writer.is_pending("p7")


def test_a_reader_waits_for_a_pending_row_and_flush_waits_for_all() -> None:
    release = threading.Event()
    written: list[str] = []

    def write(rows: Sequence[dict[str, Any]]) -> None:
        assert release.wait(30)
        written.extend(r["id"] for r in rows)

    writer = PredictionWriter(write, max_queue=100)
    for row in _rows(5):
        writer.put(row)
    assert writer.wait_written("p4", timeout=0.05) is False  # still queued
    assert writer.wait_written("unknown", timeout=0.05) is True  # never pending
    release.set()
    assert writer.wait_written("p4", timeout=30) is True
    assert "p4" in written
    assert writer.flush(timeout=30) and writer.written == 5
    writer.close()


@pytest.mark.parametrize("durable", [True, False])
def test_rows_the_database_refuses_at_shutdown_stay_in_the_journal(
    tmp_path: Path, durable: bool
) -> None:
    def write(rows: Sequence[dict[str, Any]]) -> None:
        raise RuntimeError("database is away")

    writer = PredictionWriter(write, journal=Journal(tmp_path), durable=durable)
    for row in _rows(3):
        writer.put(row)
    writer.sync()
    writer.close()  # at shutdown: a few more tries, then the rows stay for the replay
    assert writer.spilled == 3 and writer.written == 0
    kept = [r for f in sorted(tmp_path.glob("*.journal")) for r in read_segment(f)[0]]
    assert kept == _rows(3)  # each row exactly once, its input bytes intact


def test_the_durable_log_deletes_what_it_committed(tmp_path: Path) -> None:
    written: list[str] = []
    writer = PredictionWriter(
        lambda rows: written.extend(r["id"] for r in rows),
        journal=Journal(tmp_path),
        durable=True,
    )
    for row in _rows(50):
        writer.put(row)
    writer.sync()
    assert sum(len(read_segment(f)[0]) for f in tmp_path.glob("*.journal")) <= 50
    assert writer.flush()
    writer.close()
    assert sorted(written) == sorted(r["id"] for r in _rows(50))
    assert list(tmp_path.glob("*.journal")) == []


def test_answers_fail_when_their_log_rows_cannot_be_made_durable() -> None:
    def refuse() -> None:
        raise OSError(28, "No space left on device")

    batcher = MicroBatcher(max_batch=4, before_answers=refuse)
    try:
        fut = batcher.submit(FakeBackend(1, ["a"]), b"\x01")
        with pytest.raises(ModelError, match=r"cannot be kept on disk.*No space left"):
            fut.result(30)
    finally:
        batcher.close()


def test_onnx_backend_matches_torch_and_caches_its_graph(project: Any) -> None:
    loaded = project.serving_model()
    folder = Path(project.version_info(loaded.version).artifact_dir)
    onnx = load_backend(loaded, "onnx", artifact_dir=folder)
    assert onnx.name == "onnx"
    assert (folder / "serving.onnx").is_file()
    x = np.random.default_rng(1).normal(size=(5, *loaded.spec.input_shape)).astype(np.float32)
    np.testing.assert_allclose(onnx.run(x), loaded.outputs(x), atol=1e-4)
    torch_backend = load_backend(loaded, "torch", artifact_dir=folder)
    assert torch_backend.name == "torch"
    with pytest.raises(Exception, match="serving_backend must be one of onnx, torch"):
        load_backend(loaded, "tensorrt", artifact_dir=folder)


def test_the_app_serves_any_backend_behind_the_predictor_interface(project: Any) -> None:
    from fastapi.testclient import TestClient

    from flywheel.serving import create_app
    from tests.factories import digit_png

    labels = [str(d) for d in range(10)]
    fake = FakeBackend(1, labels, label="4")  # standing in for v1, whatever v1 says
    with TestClient(
        create_app(project.settings, project, backend=fake), base_url="http://127.0.0.1"
    ) as c:
        r = c.post("/v1/predict", files={"file": ("d.png", digit_png(0), "image/png")})
        assert r.status_code == 200
        body = r.json()
        assert (body["label"], body["model_version"]) == ("4", 1)
        assert body["probabilities"]["4"] == 1.0
        assert fake.batches == [1]
        assert project.prediction_log.wait_written(body["prediction_id"])
        key, _ = project.create_key(["predict"])
        metrics = c.get("/metrics", headers={"Authorization": f"Bearer {key}"}).text
        assert 'flywheel_predictions_total{label="4",model_version="1"} 1.0' in metrics
        assert "flywheel_batch_size_count 1.0" in metrics
    assert not (project.settings.project_dir / "spill").exists()  # the row was committed


def test_group_commit_answers_each_write_after_one_commit_for_many() -> None:
    import asyncio

    from flywheel.serving.batching import GroupCommit

    release = threading.Event()
    calls: list[list[int]] = []

    def commit(items: list[int]) -> list[Any]:
        calls.append(items)
        if len(calls) == 1:
            assert release.wait(30)  # the first commit is slow: the rest queue behind it
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    group = GroupCommit(commit, max_batch=4)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(group.run(0))
        while not calls:
            await asyncio.sleep(0)
        rest = [asyncio.ensure_future(group.run(i)) for i in range(1, 7)]
        while group.depth() < 6:
            await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    out = asyncio.run(main())
    group.close()
    assert calls == [[0], [1, 2, 3, 4], [5, 6]]  # queued writes share a commit
    assert out[:3] == [0, 10, 20] and out[4:] == [40, 50, 60]
    assert isinstance(out[3], ValueError) and str(out[3]) == "bad 3"  # fails alone


def test_many_answers_commit_together_and_a_bad_one_adds_nothing(project: Any) -> None:
    from sqlalchemy import func, select

    from flywheel.errors import InputError, NotFoundError
    from flywheel.project import FeedbackIn, FeedbackResult
    from flywheel.store.schema import Feedback
    from tests.factories import digit_png

    pids = [project.predict(digit_png(i), user_id="u1").prediction_id for i in range(3)]
    out = project.record_feedback_many(
        [
            FeedbackIn(pids[0], label="0", user_id="u1"),
            FeedbackIn("no-such-prediction", label="1"),
            FeedbackIn(pids[1], label="eleven"),
            FeedbackIn(pids[2], correct=False, user_id="bad id!"),
            FeedbackIn(pids[2], correct=True, user_id="u2"),
        ]
    )
    assert isinstance(out[0], FeedbackResult) and out[0].agreed == (out[0].label == "0")
    assert isinstance(out[1], NotFoundError)
    assert isinstance(out[2], InputError) and "'eleven' is not one of" in str(out[2])
    assert isinstance(out[3], InputError) and str(out[3]).startswith("user id must be")
    assert isinstance(out[4], FeedbackResult) and out[4].agreed is True
    with project.db.session() as s:
        rows = s.scalars(select(Feedback.prediction_id)).all()
        assert sorted(rows) == sorted([pids[0], pids[2]])
        assert s.scalar(select(func.count()).select_from(Feedback)) == 2
