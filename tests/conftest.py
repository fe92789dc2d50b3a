"""Fixtures with explicit scope. PostgreSQL fixtures skip with a reason when it is absent."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flywheel import Project
from flywheel.models import zoo
from tests.factories import make_project, write_plugin

# Two cores, and tests run servers and training in threads: one torch thread each keeps
# them from oversubscribing the cores (two threads were 5-6x slower under load).
torch.set_num_threads(1)

POSTGRES_URL = os.environ.get(
    "FLYWHEEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

# The Ray tests run inside a network namespace of their own, started by
# tests/test_on_ray.py (which sets FLYWHEEL_ON_RAY there): not collected here.
collect_ignore = [] if os.environ.get("FLYWHEEL_ON_RAY") else ["on_ray"]


def _postgres_reason() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'flywheel-ml[postgres]')"
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    try:
        with psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            dbname=url.database,
            password=url.password,
            connect_timeout=3,
        ):
            return None
    except psycopg.OperationalError as exc:
        return f"PostgreSQL is not reachable at {url.render_as_string(hide_password=True)}: {exc}"


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    reason = _postgres_reason()
    if reason:
        pytest.skip(reason)
    return POSTGRES_URL


@contextlib.contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    name = f"flywheel_test_{uuid.uuid4().hex[:12]}"
    conninfo = dict(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        dbname=url.database,
        password=url.password,
    )
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="function")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with throwaway_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="function", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="function")
def project(tmp_path: Path) -> Iterator[Project]:
    """A small digits project with v1 trained and in production."""
    p = make_project(tmp_path / "proj")
    yield p
    p.close()


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="function")
def plugin_site(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The ``tinyplug`` plugin (``tests.factories.write_plugin``: a package and its
    .dist-info) on sys.path for one test, as if installed; forgotten afterwards (its
    modules, the architectures resolved from it)."""
    site = write_plugin(tmp_path_factory.mktemp("site"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(zoo, "_PLUGINS", {})
    yield site
    for name in [m for m in sys.modules if m == "tinyplug" or m.startswith("tinyplug.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
