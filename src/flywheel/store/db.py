"""Engine, sessions and migrations. SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from flywheel.errors import ConfigError

__all__ = ["Database", "alembic_config", "lock_training_rows", "make_engine", "retry_locked"]

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (predictions, stats) go on while one writer commits;
    # busy_timeout makes a second writer wait instead of failing at once.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def retry_locked(work: Callable[[], T], attempts: int = 8) -> T:
    """Run a unit of work, again if SQLite says the database is locked or busy.

    busy_timeout makes a writer wait for the lock, but in WAL mode a transaction that
    read first and then writes fails at once when another process committed in
    between ("database is locked"); a fresh try then succeeds. Several server workers
    on one SQLite file meet this; PostgreSQL does not.
    """
    delay = 0.01
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except OperationalError as exc:
            said = str(exc.orig).lower()
            if attempt == attempts or not ("locked" in said or "busy" in said):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")


#: pg_advisory_xact_lock key of the transactions that read users' rows and then write
#: what depends on them (curation, trust, revisions, registration) or erase them (forget)
TRAINING_ROWS_LOCK = 0x666C_7977_726F_7773  # b"flywrows"


def lock_training_rows(s: Session) -> None:
    """Serialize this transaction with every other that reads feedback, examples, users
    or dataset versions and then writes on what it read, or erases them (a forget).

    Call it first in the transaction: what is read after it is what the previous holder
    committed (READ COMMITTED: each statement reads afresh). PostgreSQL: a transaction-
    scoped advisory lock, released at commit or rollback. SQLite: BEGIN IMMEDIATE, the
    database's write lock taken up front (busy_timeout waits for it), so no other writer
    commits between this transaction's reads and its writes. (The engine sets no BEGIN
    of its own: pysqlite opens a deferred transaction only at the first write, so a
    session's reads before it run outside any transaction and this BEGIN is the first.
    A connection already in a transaction has written, and holds the lock already.)
    """
    conn = s.connection()
    name = conn.dialect.name
    if name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": TRAINING_ROWS_LOCK})
    elif name == "sqlite":
        raw = conn.connection.dbapi_connection
        if raw is not None and not raw.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        shown = _hide_password(url)
        raise ConfigError(
            f"database_url {shown!r} cannot be used: {str(exc).replace(url, shown)}"
        ) from exc
    return engine


def alembic_config() -> Config:
    """Alembic's configuration for flywheel's migrations (the connection is set per use)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class Database:
    """Owns the engine; hands out sessions; brings the schema to the newest migration."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        database = self.engine.url.database
        #: the SQLite file (None: another database, or SQLite in memory)
        self.path = (
            Path(database)
            if self.engine.dialect.name == "sqlite" and database and database != ":memory:"
            else None
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Apply every pending migration (idempotent)."""
        cfg = alembic_config()
        try:
            with self.engine.connect() as conn:
                sqlite = conn.dialect.name == "sqlite"
                if sqlite:
                    # SQLite changes a table by copying it: with foreign keys enforced,
                    # dropping the old copy of a referenced table fails. And a copy left
                    # by an interrupted migration (SQLite DDL is not rolled back) goes.
                    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                    for name in inspect(conn).get_table_names():
                        if name.startswith("_alembic_tmp_"):
                            conn.exec_driver_sql(f'DROP TABLE "{name}"')
                    conn.commit()
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()
                    if broken:
                        raise ConfigError(
                            f"the migrated database breaks foreign keys: {broken[:5]}"
                        )
        except OperationalError as exc:
            raise ConfigError(f"cannot reach the database at {self.safe_url}: {exc.orig}") from exc

    def is_current(self) -> bool:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision() == head
        except OperationalError as exc:
            raise ConfigError(f"cannot reach the database at {self.safe_url}: {exc.orig}") from exc

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed on a clean exit and rolled back on an error."""
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
