"""A forget racing curation, a trust update, a retrain and a registration, on SQLite and
PostgreSQL: two Projects (two engines) on one store, one side held at a fixed point.

The *racer* runs in a thread until a hook holds it (only in that thread, only once);
then the *other* side starts and runs until it ends or waits on a lock the racer holds
(PostgreSQL: an ungranted lock in ``pg_locks``; SQLite: a write while the racer holds
the write lock); then the racer goes on. Every wait has a deadline; no sleeps.

  A  curation held after it selected the answers; forget a user who gave one
  B  curation held after it read the parent version's rows; forget a user with rows in it
  C  trust update held after it set a user's trust; forget that user
  D  forget held after it read the newest version; a curation meanwhile
  E  training held after its fit on a user's rows, not registered; forget the user
  F  registration held while saving the weights of a model on a user's rows; forget them
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import flywheel.data.repo as data_repo
import flywheel.feedback.service as feedback_service
import flywheel.feedback.users as feedback_users
import flywheel.loop.train as loop_train
import flywheel.privacy.forget as forget_rows
import flywheel.registry.service as registry_service
from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN, ListSource, RawExample, digits_arrays, encode_png
from flywheel.store.schema import DatasetVersion, DatasetVersionExample, Example, ModelVersion, User
from tests.conftest import throwaway_database

#: tiny and quick: one epoch on 60 rows of 8x8 digits; the gate lets a retrain through
SETTINGS = {
    "epochs": 1, "patience": 1, "batch_size": 32, "image_size": 8, "refit": False,
    "eval_share": 0.0, "max_user_share": 1.0, "gate_margin": 1.0, "gate_class_margin": None,
    "onnx_check": False,
}  # fmt: skip
RACER, OTHER = "racer", "other"
DEADLINE_S = 60.0  # any wait longer than this is a hang: the test fails, it never blocks


def _wait(cond: Callable[[], bool], what: str, tick: threading.Event) -> None:
    """Until ``cond()`` (checked at each ``tick`` or every 5 ms), or fail at the deadline."""
    end = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.005)


class Pause:
    """Holds the racer thread the first time it calls this; ``go`` lets it on."""

    def __init__(self) -> None:
        self.reached, self.go = threading.Event(), threading.Event()
        self._fired = False

    def __call__(self) -> None:
        if threading.current_thread().name != RACER or self._fired:
            return
        self._fired = True
        self.reached.set()
        if not self.go.wait(DEADLINE_S):
            raise RuntimeError("the racer was never let go")


@dataclass
class Side:
    """One side of a race, in a thread of its own (named RACER or OTHER)."""

    name: str
    work: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def start(self) -> Side:
        def body() -> None:
            try:
                self.result = self.work()
            except BaseException as exc:  # reported by the assertions
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=body, name=self.name, daemon=True)
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive(), f"{self.name} side hung"

    def ok(self) -> Any:
        assert self.error is None, f"{self.name} side failed: {self.error!r}"
        return self.result


class Watch:
    """Whether the OTHER side is waiting on a lock the racer holds: the statement it has
    in flight (its engine's cursor events) is waiting on PostgreSQL's lock table, or on
    SQLite is a write while the racer held the write lock."""

    WRITES = ("BEGIN IMMEDIATE", "INSERT", "UPDATE", "DELETE")

    def __init__(self, other: Project) -> None:
        self.engine = other.db.engine
        self.postgres = self.engine.dialect.name == "postgresql"
        self.statement: str | None = None
        self.pid: int | None = None
        self.racer_writes = False
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        event.listen(self.engine, "handle_error", self._error)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        event.remove(self.engine, "handle_error", self._error)

    def _before(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.current_thread().name == OTHER:
            if self.postgres:
                self.pid = conn.connection.dbapi_connection.info.backend_pid
            self.statement = statement

    def _after(self, *_args: Any) -> None:
        if threading.current_thread().name == OTHER:
            self.statement = None

    def _error(self, _ctx: Any) -> None:
        if threading.current_thread().name == OTHER:
            self.statement = None

    def racer_paused(self) -> None:
        """The racer is held: note (SQLite) whether it holds the write lock."""
        if self.postgres:
            return
        path = self.engine.url.database
        assert path
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc) or "busy" in str(exc), exc
            self.racer_writes = True
        finally:
            probe.close()

    def other_waits(self) -> bool:
        statement = self.statement
        if statement is None:
            return False
        if not self.postgres:
            return self.racer_writes and statement.lstrip().upper().startswith(self.WRITES)
        with self.engine.connect() as c:
            return bool(
                c.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE pid = %(pid)s AND NOT granted",
                    {"pid": self.pid},
                ).scalar()
            )


def race(
    racer_work: Callable[[], Any], other_work: Callable[[], Any], pause: Pause, watch: Watch
) -> tuple[Side, Side]:
    """The racer until its pause; the other side until it ends or waits on the racer;
    then both to their ends."""
    racer = Side(RACER, racer_work).start()
    _wait(lambda: pause.reached.is_set() or racer.done.is_set(), "the racer's pause", racer.done)
    assert pause.reached.is_set(), f"the racer ended before its pause: {racer.error!r}"
    watch.racer_paused()
    other = Side(OTHER, other_work).start()
    _wait(lambda: other.done.is_set() or watch.other_waits(), "the other side", other.done)
    pause.go.set()
    racer.join()
    other.join()
    return racer, other


def answer(p: Project, user: str, start: int, n: int = 3) -> None:
    images, labels = digits_arrays()
    for i in range(start, start + n):
        r = p.predict(encode_png(images[i]), user_id=user)
        p.record_feedback(r.prediction_id, label=str(labels[i]), user_id=user)


# -- one project per backend, copied for each test ----------------------------------------


@dataclass
class Template:
    root: Path
    postgres: str | None  # the admin URL, and the template database's name
    database: str | None = None


def _admin(url: str) -> dict[str, Any]:
    u = make_url(url)
    return dict(
        host=u.host, port=u.port or 5432, user=u.username, dbname=u.database, password=u.password
    )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Template]:
    """v1 trained and in production; three answers each from alice and bob, not curated."""
    root = tmp_path_factory.mktemp("race-template") / "p"
    images, labels = digits_arrays()
    rows = [
        RawExample(encode_png(images[j]), str(labels[j]), split=TRAIN if j < 60 else HOLDOUT,
                   source_path=f"digits[{j}]")
        for j in range(80)
    ]  # fmt: skip

    def build(settings: dict[str, Any]) -> None:
        p = Project.init(root, ListSource("digits-race", rows), settings=settings)
        try:
            p.train()
            answer(p, "alice", 100)
            answer(p, "bob", 200)
        finally:
            p.close()

    if request.param == "sqlite":
        build(SETTINGS)
        yield Template(root, None)
        return
    admin: str = request.getfixturevalue("postgres_admin_url")
    with throwaway_database(admin) as url:
        build({**SETTINGS, "database_url": url})  # closed: no session left on it
        yield Template(root, admin, make_url(url).database)


@pytest.fixture
def projects(template: Template, tmp_path: Path) -> Iterator[tuple[Project, Project]]:
    """Two Projects on one copy of the template (PostgreSQL: a database made from it)."""
    root = tmp_path / "p"
    shutil.copytree(template.root, root)
    overrides: dict[str, Any] = {}
    name = None
    if template.postgres is not None:
        import psycopg

        name = f"flywheel_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(**_admin(template.postgres), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.database}"')
        overrides["database_url"] = (
            make_url(template.postgres).set(database=name).render_as_string(hide_password=False)
        )
    p1, p2 = Project.open(root, **overrides), Project.open(root, **overrides)
    try:
        yield p1, p2
    finally:
        p1.close()
        p2.close()
        if name is not None:
            import psycopg

            assert template.postgres is not None
            with psycopg.connect(**_admin(template.postgres), autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- what the store must hold afterwards ---------------------------------------------------


def assert_no_row_left_out(p: Project) -> None:
    """Every answer curated into a row (and not erased) is in the newest dataset version."""
    with p.db.session() as s:
        newest = data_repo.latest(s)
        assert newest is not None
        in_newest = set(
            s.scalars(
                select(Example.feedback_id)
                .join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id)
                .where(
                    DatasetVersionExample.dataset_version_id == newest.id,
                    Example.feedback_id.is_not(None),
                )
            )
        )
        used = set(s.scalars(select(Example.feedback_id).where(Example.feedback_id.is_not(None))))
        assert used <= in_newest, f"v{newest.id} leaves out curated answers {used - in_newest}"


def assert_erased_models_withdrawn(p: Project) -> set[int]:
    """Every model version trained on a dataset version a forget erased rows of is
    withdrawn, and production is none of them; returns those versions."""
    with p.db.session() as s:
        erased = {d.id for d in s.scalars(select(DatasetVersion)) if d.erased}
        tainted = list(
            s.scalars(select(ModelVersion).where(ModelVersion.dataset_version_id.in_(erased)))
        )
        served = [m.version for m in tainted if m.withdrawn_at is None]
        assert not served, f"v{served} trained on erased rows and not withdrawn"
        production = p.production_version()
        assert production not in {m.version for m in tainted}
        return {m.version for m in tainted}


def assert_forgotten(p: Project, who: str) -> None:
    with p.db.session() as s:
        assert s.get(User, who) is None
        assert not list(s.scalars(select(Example).where(Example.user_id == who)))


# -- the scenarios -------------------------------------------------------------------------


@pytest.fixture
def watch(projects: tuple[Project, Project]) -> Iterator[Watch]:
    w = Watch(projects[1])
    yield w
    w.close()


def forget_alice(p: Project) -> Callable[[], Any]:
    return lambda: p.forget("alice", retrain=False)


def test_a_curation_after_selecting_answers(
    projects: tuple[Project, Project], watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    p1, p2 = projects
    alice, pause, orig = p1.pseudonym("alice"), Pause(), feedback_service.curate

    def held(*a: Any, **k: Any) -> Any:
        out = orig(*a, **k)
        pause()
        return out

    monkeypatch.setattr(feedback_service, "curate", held)
    cur, fg = race(p1.curate, forget_alice(p2), pause, watch)
    cur.ok(), fg.ok()
    assert alice is not None
    assert_forgotten(p1, alice)
    assert_no_row_left_out(p1)
    assert_erased_models_withdrawn(p1)


def test_b_curation_after_reading_the_parent_rows(
    projects: tuple[Project, Project], watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    p1, p2 = projects
    p1.curate()  # v2: alice's and bob's rows
    answer(p1, "carol", 300)  # for the racing curation
    pause, orig = Pause(), data_repo.new_version

    def held(s: Session, examples: Any, **k: Any) -> Any:
        if k.get("source") == "feedback":
            pause()
        return orig(s, examples, **k)

    monkeypatch.setattr(data_repo, "new_version", held)
    cur, fg = race(p1.curate, forget_alice(p2), pause, watch)
    cur.ok(), fg.ok()
    assert_no_row_left_out(p1)
    assert_erased_models_withdrawn(p1)


def test_c_trust_update_after_loading_the_user(
    projects: tuple[Project, Project], watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    p1, p2 = projects
    alice, pause, orig = p1.pseudonym("alice"), Pause(), feedback_users.estimate_trust

    def alice_first(*a: Any, **k: Any) -> Any:
        # Her row is set (and flushed) before any other: the racer has written nothing
        # when it is held, whatever order the pseudonyms would give.
        trust = orig(*a, **k)
        return {u: trust[u] for u in sorted(trust, key=lambda u: u != alice)}

    monkeypatch.setattr(feedback_users, "estimate_trust", alice_first)

    def before_flush(s: Session, _ctx: Any, _instances: Any) -> None:
        if any(isinstance(o, User) and o.id == alice for o in s.dirty):
            pause()

    event.listen(Session, "before_flush", before_flush)
    try:
        trust, fg = race(p1.update_trust, forget_alice(p2), pause, watch)
    finally:
        event.remove(Session, "before_flush", before_flush)
    trust.ok(), fg.ok()
    assert alice is not None
    assert_forgotten(p1, alice)


def test_d_curation_while_a_forget_read_the_newest_version(
    projects: tuple[Project, Project], watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    p1, p2 = projects
    p1.curate()  # v2: alice's and bob's rows
    answer(p1, "carol", 300)
    pause, orig = Pause(), forget_rows.totals

    def held(s: Session) -> Any:
        pause()
        return orig(s)

    monkeypatch.setattr(forget_rows, "totals", held)
    # The forget is the racer here (in p1); the curation the other side (p2).
    fg, cur = race(forget_alice(p1), p2.curate, pause, watch)
    fg.ok(), cur.ok()
    assert_no_row_left_out(p1)
    assert_erased_models_withdrawn(p1)


def test_e_forget_between_fit_and_registration(
    projects: tuple[Project, Project], watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    p1, p2 = projects
    p1.curate()  # v2: alice's and bob's rows
    pause, orig = Pause(), loop_train.fit

    def held(*a: Any, **k: Any) -> Any:
        out = orig(*a, **k)
        pause()
        return out

    monkeypatch.setattr(loop_train, "fit", held)
    tr, fg = race(p1.train, forget_alice(p2), pause, watch)
    fg.ok()
    model = tr.ok().model
    assert model.withdrawn is None
    assert p1.version_info(model.version - 1).withdrawn  # the run on alice's rows, trained again
    assert model.version not in assert_erased_models_withdrawn(p1)


def test_f_forget_during_registration(
    projects: tuple[Project, Project], watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    p1, p2 = projects
    p1.curate()  # v2: alice's and bob's rows
    pause, orig = Pause(), registry_service.save_artifact

    def held(*a: Any, **k: Any) -> Any:
        pause()
        return orig(*a, **k)

    monkeypatch.setattr(registry_service, "save_artifact", held)
    tr, fg = race(p1.train, forget_alice(p2), pause, watch)
    registered = tr.ok().model.version
    fg.ok()
    assert registered in assert_erased_models_withdrawn(p1)
    assert registered in p1.audit_log("forget")[-1]["detail"]["versions_affected"]
