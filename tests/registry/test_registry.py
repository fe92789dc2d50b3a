"""Registry: promote, aliases, rollback through the promotion history (both backends)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from flywheel.errors import NotFoundError, RegistryError
from flywheel.registry import CANDIDATE, PRODUCTION
from flywheel.registry.repo import get_alias, list_versions, promote, rollback, set_alias
from flywheel.store import Database
from flywheel.store.schema import AliasEvent, DatasetVersion, ModelVersion

T0 = datetime(2024, 5, 1, 9, 0, 0, tzinfo=UTC)
N_VERSIONS = 4


@pytest.fixture(scope="function")
def db(database_url: str) -> Iterator[Database]:
    """A migrated database with one dataset version and model versions 1..4, no aliases."""
    database = Database(database_url)
    try:
        database.migrate()
        with database.session() as s:
            dv = DatasetVersion(
                content_hash="d" * 64,
                source="digits-test",
                preprocessing={"size": [8, 8]},
                stats={"n": 10},
                created_at=T0,
            )
            s.add(dv)
            s.flush()
            parent = None
            for i in range(1, N_VERSIONS + 1):
                mv = ModelVersion(
                    arch="mlp",
                    parent_version=parent,
                    dataset_version_id=dv.id,
                    training_config={"seed": i},
                    spec={"classes": ["0", "1"]},
                    metrics={"accuracy": 0.5 + i / 10},
                    gate=None,
                    artifact_dir=f"models/v{i}",
                    weights_sha256=f"{i}" * 64,
                    created_at=T0,
                )
                s.add(mv)
                s.flush()
                assert mv.version == i
                parent = mv.version
        yield database
    finally:
        database.dispose()


def _production(db: Database) -> int | None:
    with db.session() as s:
        return get_alias(s, PRODUCTION)


def _events(db: Database) -> list[tuple[str, int | None, int | None, str, str]]:
    with db.session() as s:
        return [
            (e.name, e.version, e.previous_version, e.action, e.reason)
            for e in s.scalars(select(AliasEvent).order_by(AliasEvent.id))
        ]


def _promote(db: Database, *versions: int) -> None:
    for v in versions:
        with db.session() as s:
            promote(s, v, f"promote v{v}")


def _rollback(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return rollback(s, "bad model")


def test_promote_sets_production_and_records_events(db: Database) -> None:
    assert _production(db) is None
    with db.session() as s:
        assert promote(s, 1, "first model") is None
    assert _production(db) == 1
    with db.session() as s:
        assert promote(s, 2, "better") == 1
    assert _production(db) == 2
    assert _events(db) == [
        (PRODUCTION, 1, None, "promote", "first model"),
        (PRODUCTION, 2, 1, "promote", "better"),
    ]


def test_list_versions_reports_aliases(db: Database) -> None:
    _promote(db, 2)
    with db.session() as s:
        set_alias(s, CANDIDATE, 3, action="promote", reason="candidate")
    with db.session() as s:
        infos = list_versions(s)
    assert [(v.version, v.aliases) for v in infos] == [
        (1, []),
        (2, [PRODUCTION]),
        (3, [CANDIDATE]),
        (4, []),
    ]
    assert [v.parent for v in infos] == [None, 1, 2, 3]
    assert infos[2].metrics == {"accuracy": 0.8}
    assert infos[2].training_config == {"seed": 3}
    assert infos[2].artifact_dir == "models/v3"

    with db.session() as s:
        set_alias(s, CANDIDATE, 2, action="promote", reason="same as production")
    with db.session() as s:
        infos = list_versions(s)
    assert [(v.version, v.aliases) for v in infos] == [
        (1, []),
        (2, [CANDIDATE, PRODUCTION]),
        (3, []),
        (4, []),
    ]


def test_promote_of_an_unknown_version_raises_not_found(db: Database) -> None:
    _promote(db, 1)
    with pytest.raises(NotFoundError) as exc_info, db.session() as s:
        promote(s, 99, "typo")
    assert exc_info.value.kind == "model version"
    assert exc_info.value.ident == 99
    assert _production(db) == 1
    assert _events(db) == [(PRODUCTION, 1, None, "promote", "promote v1")]


def test_rollback_with_no_production_raises(db: Database) -> None:
    with pytest.raises(RegistryError, match="no production model"), db.session() as s:
        rollback(s)
    assert _production(db) is None
    assert _events(db) == []


def test_rollback_walks_back_through_promotions(db: Database) -> None:
    _promote(db, 1, 2, 3)
    assert _production(db) == 3

    assert _rollback(db) == (3, 2)
    assert _production(db) == 2
    assert _rollback(db) == (2, 1)
    assert _production(db) == 1
    with pytest.raises(RegistryError, match="v1 has no earlier version"):
        _rollback(db)
    assert _production(db) == 1

    assert _events(db) == [
        (PRODUCTION, 1, None, "promote", "promote v1"),
        (PRODUCTION, 2, 1, "promote", "promote v2"),
        (PRODUCTION, 3, 2, "promote", "promote v3"),
        (PRODUCTION, 2, 3, "rollback", "bad model"),
        (PRODUCTION, 1, 2, "rollback", "bad model"),
    ]


def test_rollback_of_the_first_promotion_raises(db: Database) -> None:
    _promote(db, 1)
    with pytest.raises(RegistryError, match="v1 has no earlier version"):
        _rollback(db)
    assert _production(db) == 1


def test_rollback_after_a_manual_promote_of_an_old_version_returns_to_the_replaced_one(
    db: Database,
) -> None:
    _promote(db, 1, 2, 3)
    with db.session() as s:
        assert promote(s, 1, "manual: v3 misbehaves") == 3
    assert _production(db) == 1

    assert _rollback(db) == (1, 3)
    assert _production(db) == 3
    assert _events(db)[-2:] == [
        (PRODUCTION, 1, 3, "promote", "manual: v3 misbehaves"),
        (PRODUCTION, 3, 1, "rollback", "bad model"),
    ]


def test_rollback_ignores_other_aliases(db: Database) -> None:
    _promote(db, 1, 2)
    with db.session() as s:
        set_alias(s, CANDIDATE, 4, action="promote", reason="candidate")
        set_alias(s, CANDIDATE, 2, action="promote", reason="candidate")
    assert _rollback(db) == (2, 1)
    with db.session() as s:
        assert get_alias(s, CANDIDATE) == 2
