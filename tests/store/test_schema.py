"""Every table round-trips on SQLite and PostgreSQL; ensure_user is idempotent and race-safe."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

from flywheel.store import Database, ensure_user
from flywheel.store.schema import (
    AliasEvent,
    ApiKey,
    Base,
    DatasetVersion,
    DatasetVersionExample,
    Example,
    Feedback,
    Job,
    ModelAlias,
    ModelVersion,
    Prediction,
    User,
)

T0 = datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
PRED_ID = "11111111-1111-1111-1111-111111111111"
FEEDBACK_ID = "22222222-2222-2222-2222-222222222222"
JSON_DOC: dict[str, Any] = {
    "lr": 0.001,
    "epochs": 3,
    "augment": True,
    "schedule": None,
    "layers": [32, 64, {"kind": "pool", "size": 2}],
    "labels": ["zéro", "一", "2"],
    "nested": {"a": {"b": {"c": -1.5}}},
}


@pytest.fixture(scope="function")
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    try:
        database.migrate()
        yield database
    finally:
        database.dispose()


def _as_utc(value: Any) -> Any:
    # SQLite hands timestamps back naive (see test_timestamps_come_back_timezone_aware);
    # the round trips compare instants so that they check the other columns on both backends.
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _roundtrip(db: Database, model: type[Base], **values: Any) -> Any:
    """Insert one row, read it back in a fresh session, check every given column."""
    with db.session() as s:
        obj = model(**values)
        s.add(obj)
        s.flush()
        identity = inspect(obj).identity
    with db.session() as s:
        loaded = s.get(model, identity)
        assert loaded is not None
        got = {k: _as_utc(getattr(loaded, k)) for k in values}
    assert got == {k: _as_utc(v) for k, v in values.items()}
    return loaded


def _dataset_version(db: Database, **overrides: Any) -> int:
    values: dict[str, Any] = {
        "content_hash": "d" * 64,
        "source": "digits-test",
        "preprocessing": {"size": [8, 8]},
        "stats": {"n": 0},
        "created_at": T0,
        **overrides,
    }
    with db.session() as s:
        dv = DatasetVersion(**values)
        s.add(dv)
        s.flush()
        return dv.id


def _model_version(db: Database, dataset_version_id: int, **overrides: Any) -> int:
    values: dict[str, Any] = {
        "arch": "mlp",
        "dataset_version_id": dataset_version_id,
        "training_config": {"epochs": 3},
        "spec": {"classes": ["0", "1"]},
        "metrics": {"accuracy": 0.5},
        "artifact_dir": "models/v",
        "weights_sha256": "a" * 64,
        "created_at": T0,
        **overrides,
    }
    with db.session() as s:
        mv = ModelVersion(**values)
        s.add(mv)
        s.flush()
        return mv.version


def _prediction(db: Database, model_version: int, user_id: str | None = None) -> str:
    with db.session() as s:
        s.add(
            Prediction(
                id=PRED_ID,
                model_version=model_version,
                user_id=user_id,
                input_hash="e" * 64,
                label="1",
                probabilities={"0": 0.25, "1": 0.75},
                latency_ms=2.5,
                created_at=T0,
            )
        )
    return PRED_ID


def _count(db: Database, model: type[Base]) -> int:
    with db.session() as s:
        n = s.scalar(select(func.count()).select_from(model))
    assert n is not None
    return n


def test_users_roundtrip(db: Database) -> None:
    _roundtrip(db, User, id="user-ü-1", created_at=T0)


def test_users_created_at_defaults_to_now(db: Database) -> None:
    before = datetime.now(UTC)
    with db.session() as s:
        s.add(User(id="u"))
    after = datetime.now(UTC)
    with db.session() as s:
        user = s.get(User, "u")
    assert user is not None
    assert before <= _as_utc(user.created_at) <= after


def test_api_keys_roundtrip(db: Database) -> None:
    active = _roundtrip(
        db,
        ApiKey,
        name="ci",
        prefix="fw_abc123",
        key_hash="1" * 64,
        scopes="predict,feedback",
        created_at=T0,
        revoked_at=None,
    )
    revoked = _roundtrip(
        db,
        ApiKey,
        name="old",
        prefix="fw_def456",
        key_hash="2" * 64,
        scopes="admin",
        created_at=T0,
        revoked_at=T0 + timedelta(days=1),
    )
    assert isinstance(active.id, int)
    assert revoked.id != active.id


def test_api_keys_prefix_is_unique(db: Database) -> None:
    _roundtrip(db, ApiKey, name="a", prefix="fw_same", key_hash="1" * 64, scopes="admin")
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(ApiKey(name="b", prefix="fw_same", key_hash="2" * 64, scopes="admin"))
    assert _count(db, ApiKey) == 1


def test_examples_roundtrip(db: Database) -> None:
    dv = _dataset_version(db)
    mv = _model_version(db, dv)
    with db.session() as s:
        ensure_user(s, "user-1")
    _prediction(db, mv, user_id="user-1")
    with db.session() as s:
        s.add(Feedback(id=FEEDBACK_ID, prediction_id=PRED_ID, user_id="user-1", label="7"))
    base = _roundtrip(
        db,
        Example,
        input_hash="f" * 64,
        label="3",
        split="train",
        origin="base",
        feedback_id=None,
        user_id=None,
        source_path="digits[3]",
        created_at=T0,
    )
    from_feedback = _roundtrip(
        db,
        Example,
        input_hash="e" * 64,
        label="7",
        split="holdout",
        origin="feedback",
        feedback_id=FEEDBACK_ID,
        user_id="user-1",
        source_path=None,
        created_at=T0,
    )
    assert from_feedback.id != base.id


def test_dataset_versions_and_their_examples_roundtrip(db: Database) -> None:
    parent = _roundtrip(
        db,
        DatasetVersion,
        content_hash="a" * 64,
        parent_id=None,
        source="digits-test",
        preprocessing=JSON_DOC,
        stats={"n": 2, "per_label": {"0": 1, "1": 1}},
        created_at=T0,
    )
    child = _roundtrip(
        db,
        DatasetVersion,
        content_hash="b" * 64,
        parent_id=parent.id,
        source="digits-test+feedback",
        preprocessing={},
        stats={"n": 3, "per_label": {"0": 1, "1": 2}},
        created_at=T0,
    )
    with db.session() as s:
        examples = [
            Example(input_hash=f"{i}" * 64, label=str(i % 2), split="train", origin="base")
            for i in range(3)
        ]
        s.add_all(examples)
        s.flush()
        ids = [e.id for e in examples]
        s.add_all(
            DatasetVersionExample(dataset_version_id=parent.id, example_id=i) for i in ids[:2]
        )
        s.add_all(DatasetVersionExample(dataset_version_id=child.id, example_id=i) for i in ids)
    with db.session() as s:
        members = {
            dv_id: set(
                s.scalars(
                    select(DatasetVersionExample.example_id).where(
                        DatasetVersionExample.dataset_version_id == dv_id
                    )
                )
            )
            for dv_id in (parent.id, child.id)
        }
    assert members == {parent.id: set(ids[:2]), child.id: set(ids)}


def test_dataset_version_example_pairs_are_unique(db: Database) -> None:
    dv = _dataset_version(db)
    with db.session() as s:
        ex = Example(input_hash="0" * 64, label="0", split="train", origin="base")
        s.add(ex)
        s.flush()
        ex_id = ex.id
        s.add(DatasetVersionExample(dataset_version_id=dv, example_id=ex_id))
    with pytest.raises(IntegrityError), db.session() as s:
        s.execute(
            DatasetVersionExample.__table__.insert().values(dataset_version_id=dv, example_id=ex_id)
        )
    assert _count(db, DatasetVersionExample) == 1


def test_model_versions_roundtrip_json_columns(db: Database) -> None:
    dv = _dataset_version(db)
    first = _roundtrip(
        db,
        ModelVersion,
        arch="cnn",
        parent_version=None,
        dataset_version_id=dv,
        training_config=JSON_DOC,
        spec={"classes": [str(i) for i in range(10)], "input": {"size": [8, 8], "mode": "L"}},
        metrics={"accuracy": 0.875, "per_class": {"0": 1.0, "1": 0.5}},
        gate=None,
        artifact_dir="models/v1",
        weights_sha256="c" * 64,
        created_at=T0,
    )
    second = _roundtrip(
        db,
        ModelVersion,
        arch="cnn",
        parent_version=first.version,
        dataset_version_id=dv,
        training_config={},
        spec={"classes": ["0"]},
        metrics={},
        gate={"passed": False, "reasons": ["accuracy fell by 0.02"], "delta": -0.02},
        artifact_dir="models/v2",
        weights_sha256="d" * 64,
        created_at=T0,
    )
    assert second.version > first.version
    assert isinstance(second.training_config, dict)
    assert second.gate == {"passed": False, "reasons": ["accuracy fell by 0.02"], "delta": -0.02}


def test_model_aliases_and_alias_events_roundtrip(db: Database) -> None:
    dv = _dataset_version(db)
    v1 = _model_version(db, dv)
    v2 = _model_version(db, dv)
    _roundtrip(db, ModelAlias, name="production", version=v2, updated_at=T0)
    first = _roundtrip(
        db,
        AliasEvent,
        name="production",
        version=v1,
        previous_version=None,
        action="promote",
        reason="first model",
        created_at=T0,
    )
    second = _roundtrip(
        db,
        AliasEvent,
        name="production",
        version=v2,
        previous_version=v1,
        action="promote",
        reason="better accuracy",
        created_at=T0 + timedelta(seconds=1),
    )
    assert second.id > first.id


def test_predictions_and_feedback_roundtrip(db: Database) -> None:
    dv = _dataset_version(db)
    mv = _model_version(db, dv)
    with db.session() as s:
        ensure_user(s, "user-1")
    _roundtrip(
        db,
        Prediction,
        id=PRED_ID,
        model_version=mv,
        user_id="user-1",
        input_hash="9" * 64,
        label="4",
        probabilities={"3": 0.125, "4": 0.75, "9": 0.125},
        latency_ms=3.25,
        created_at=T0,
    )
    _roundtrip(
        db,
        Feedback,
        id=FEEDBACK_ID,
        prediction_id=PRED_ID,
        user_id="user-1",
        label="9",
        correct=False,
        created_at=T0,
    )
    _roundtrip(
        db,
        Feedback,
        id="33333333-3333-3333-3333-333333333333",
        prediction_id=PRED_ID,
        user_id=None,
        label=None,
        correct=True,
        created_at=T0,
    )
    _roundtrip(
        db,
        Feedback,
        id="44444444-4444-4444-4444-444444444444",
        prediction_id=PRED_ID,
        user_id=None,
        label="4",
        correct=None,
        created_at=T0,
    )


def test_jobs_roundtrip(db: Database) -> None:
    _roundtrip(
        db,
        Job,
        id="55555555-5555-5555-5555-555555555555",
        kind="retrain",
        status="queued",
        params={"epochs": 3, "reason": None},
        result=None,
        error=None,
        created_at=T0,
        started_at=None,
        finished_at=None,
    )
    _roundtrip(
        db,
        Job,
        id="66666666-6666-6666-6666-666666666666",
        kind="retrain",
        status="failed",
        params={},
        result={"version": 2, "gate": {"passed": False}},
        error="Traceback: boom",
        created_at=T0,
        started_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(minutes=2, microseconds=7),
    )


def test_timestamps_come_back_timezone_aware(db: Database) -> None:
    with db.session() as s:
        s.add(User(id="u", created_at=T0))
    with db.session() as s:
        user = s.get(User, "u")
    assert user is not None
    assert user.created_at.tzinfo is not None
    assert user.created_at == T0


def test_ensure_user_twice_leaves_one_row(db: Database) -> None:
    with db.session() as s:
        ensure_user(s, "same")
    with db.session() as s:
        first = s.get(User, "same")
    assert first is not None
    with db.session() as s:
        ensure_user(s, "same")
    with db.session() as s:
        ids = s.scalars(select(User.id)).all()
        again = s.get(User, "same")
    assert ids == ["same"]
    assert again is not None
    assert again.created_at == first.created_at  # the second call did not overwrite the row


def test_ensure_user_from_8_threads_at_once_leaves_one_row(db: Database) -> None:
    n = 8
    barrier = threading.Barrier(n)

    def worker() -> None:
        with db.session() as s:
            s.connection()  # hold a connection before the race starts
            barrier.wait(timeout=30)
            ensure_user(s, "racer")

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(worker) for _ in range(n)]
        for f in futures:
            f.result()  # re-raises whatever a worker raised
    with db.session() as s:
        assert s.scalars(select(User.id)).all() == ["racer"]
