"""Database: migrations, the schema they build, SQLite pragmas, URL errors, sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from flywheel.errors import ConfigError
from flywheel.store import Database
from flywheel.store.db import alembic_config
from flywheel.store.schema import Base, Prediction, User

TABLES = {
    "alias_events",
    "api_keys",
    "audit_log",
    "privacy_ledger",
    "store_meta",
    "ui_sessions",
    "dataset_version_examples",
    "dataset_versions",
    "examples",
    "explanations",
    "feedback",
    "review_items",
    "jobs",
    "webhook_deliveries",
    "drift_windows",
    "leases",
    "model_aliases",
    "model_versions",
    "predictions",
    "users",
}


@pytest.fixture(scope="function")
def db(database_url: str) -> Iterator[Database]:
    """A migrated database on each backend, disposed after the test."""
    database = Database(database_url)
    try:
        database.migrate()
        yield database
    finally:
        database.dispose()


def test_migrate_is_idempotent_and_is_current_follows_it(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert database.is_current() is False
        assert set(inspect(database.engine).get_table_names()) == set()

        database.migrate()
        assert database.is_current() is True
        database.migrate()
        assert database.is_current() is True

        assert set(inspect(database.engine).get_table_names()) == TABLES | {"alembic_version"}
        with database.engine.connect() as conn:
            revisions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert revisions == [(head,)]
    finally:
        database.dispose()


def test_orm_metadata_matches_the_migrations(db: Database) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_sqlite_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    try:
        database.migrate()
        with database.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        database.dispose()


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(
            Prediction(
                id="00000000-0000-0000-0000-000000000001",
                model_version=999,
                input_hash="0" * 64,
                label="7",
                probabilities={"7": 1.0},
                latency_ms=1.5,
            )
        )
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 0


@pytest.mark.parametrize(
    "url",
    [
        "notadb://x",
        "not a url",
        "postgresql+nosuchdriver://host/db",
        "mysql://user@host/db",  # the driver (MySQLdb) is not installed
    ],
)
def test_unusable_url_raises_config_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        Database(url)
    assert repr(url) in str(exc_info.value)


def test_unusable_url_message_hides_the_password() -> None:
    with pytest.raises(ConfigError) as exc_info:
        Database("notadb://user:s3cret@host/db")
    message = str(exc_info.value)
    assert "s3cret" not in message
    assert "notadb://user:***@host/db" in message


def test_unreachable_postgres_raises_config_error_without_the_password() -> None:
    pytest.importorskip("psycopg")
    database = Database("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(ConfigError) as exc_info:
            database.migrate()
    finally:
        database.dispose()
    message = str(exc_info.value)
    assert "postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere" in message
    assert "s3cret" not in message


def test_sqlite_in_a_missing_folder_raises_config_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'store.db'}"
    database = Database(url)
    try:
        with pytest.raises(ConfigError) as exc_info:
            database.migrate()
    finally:
        database.dispose()
    assert str(tmp_path / "missing" / "store.db") in str(exc_info.value)


def test_session_commits_on_a_clean_exit(db: Database) -> None:
    with db.session() as s:
        s.add(User(id="kept"))
    with db.session() as s:
        assert s.scalars(select(User.id)).all() == ["kept"]


def test_session_rolls_back_on_an_exception(db: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"), db.session() as s:
        s.add(User(id="ghost"))
        s.flush()  # the row reached the database inside the transaction
        assert s.get(User, "ghost") is not None
        raise RuntimeError("boom")
    with db.session() as s:
        assert s.get(User, "ghost") is None
        assert s.scalar(select(func.count()).select_from(User)) == 0


def _database_at(url: str, revision: str) -> Database:
    """A database migrated only up to ``revision`` (as an older flywheel left it)."""
    from alembic import command

    database = Database(url)
    cfg = alembic_config()
    with database.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return database


def test_upgrading_from_the_first_schema_keeps_the_rows(database_url: str) -> None:
    """A project made before regression support (0001) opens under the newest schema."""
    database = _database_at(database_url, "0001")
    try:
        with database.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO users (id, created_at) VALUES ('u1', CURRENT_TIMESTAMP)")
            )
        database.migrate()
        assert database.is_current() is True
        with database.session() as s:
            assert s.get(User, "u1") is not None
        columns = {c["name"] for c in inspect(database.engine).get_columns("examples")}
        assert "value" in columns
    finally:
        database.dispose()


def test_upgrading_a_first_schema_project_with_data_keeps_every_row(database_url: str) -> None:
    """0001 → head with examples referenced by dataset versions (SQLite copies the table)."""
    database = _database_at(database_url, "0001")
    try:
        with database.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO dataset_versions (id, content_hash, source, preprocessing, stats, "
                    "created_at) VALUES (1, 'h', 's', '{}', '{}', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO examples (id, input_hash, label, split, origin, created_at) "
                    "VALUES (1, 'a', '3', 'train', 'base', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO dataset_version_examples (dataset_version_id, example_id) "
                    "VALUES (1, 1)"
                )
            )
        database.migrate()
        assert database.is_current() is True
        with database.engine.connect() as conn:
            assert conn.execute(text("SELECT label, value, weight FROM examples")).all() == [
                ("3", None, None)
            ]
            assert conn.execute(text("SELECT * FROM dataset_version_examples")).all() == [(1, 1)]
            tables = inspect(conn).get_table_names()
        assert not [t for t in tables if t.startswith("_alembic_tmp_")]
    finally:
        database.dispose()


def test_upgrading_keeps_versions_verifiable_and_makes_their_folders_relative(
    database_url: str, tmp_path: Path
) -> None:
    """0007 → head: an absolute artifact folder under <project>/models becomes relative, and
    the spec as it stands is hashed (so later edits are caught)."""
    import hashlib

    folder = tmp_path / "project" / "models" / "v1"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text('{"arch": "seed_cnn"}')
    database = _database_at(database_url, "0007")
    try:
        with database.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO dataset_versions (id, content_hash, source, preprocessing, stats, "
                    "created_at) VALUES (1, 'h', 's', '{}', '{}', CURRENT_TIMESTAMP)"
                )
            )
            for version, where in ((1, str(folder)), (2, "/somewhere/else")):
                conn.execute(
                    text(
                        "INSERT INTO model_versions (version, arch, dataset_version_id, "
                        "training_config, spec, metrics, artifact_dir, weights_sha256, "
                        "created_at) VALUES (:v, 'seed_cnn', 1, '{}', '{}', '{}', :d, 'w', "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {"v": version, "d": where},
                )
        database.migrate()
        with database.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT version, artifact_dir, spec_sha256, graph_sha256 FROM model_versions "
                    "ORDER BY version"
                )
            ).all()
        spec_hash = hashlib.sha256((folder / "spec.json").read_bytes()).hexdigest()
        assert rows == [(1, "models/v1", spec_hash, None), (2, "/somewhere/else", None, None)]
    finally:
        database.dispose()
