"""The one model cache: production in memory, swapped at once by promote and rollback."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from flywheel import Project
from flywheel.errors import ModelError
from flywheel.registry import cache as cache_module
from flywheel.registry.cache import Served
from tests.factories import make_project


def _second(project: Project) -> int:
    """Another trained version (whatever the gate made of it)."""
    return project.train(project.train_config(epochs=1, warm_start=False, seed=3)).model.version


def test_promote_and_rollback_swap_what_serves_at_once(project: Project) -> None:
    v2 = _second(project)
    project.promote(1)  # the gate may have promoted v2: start from v1
    held = project.cache.current()
    assert held.version == 1
    project.promote(v2)
    assert project.cache.current().version == v2  # no refresh needed
    assert project.serving_model() is project.cache.current().loaded
    assert held.loaded.version == 1  # a caller that held v1 finishes on it
    assert project.rollback() == (v2, 1)
    assert project.cache.current().version == 1


def test_a_server_hears_of_every_swap_with_the_backend_it_asked_for(project: Project) -> None:
    swaps: list[Served] = []
    project.cache.serve_with("onnx", on_swap=swaps.append)
    first = project.cache.current()
    assert first.backend.name == "onnx" and first.kind == "onnx"
    assert project.cache.current() is first  # loaded once, held
    v2 = _second(project)
    project.promote(v2)
    assert [s.version for s in swaps][-1] == v2
    assert swaps[-1].backend.name == "onnx"
    assert (Path(project.version_info(v2).artifact_dir) / "serving.onnx").is_file()


def test_get_gives_the_served_version_and_loads_any_other(project: Project) -> None:
    held = project.cache.current()
    assert project.cache.get(1) is held.loaded
    v2 = _second(project)
    project.promote(1)
    other = project.cache.get(v2)
    assert other.version == v2 and other is not project.cache.current().loaded


def test_no_production_is_a_clear_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", train=False)
    assert project.cache.refresh() is None
    with pytest.raises(ModelError, match="no production model yet"):
        project.cache.current()
    project.close()


def test_a_refresh_that_read_the_alias_before_a_promote_cannot_swap_the_old_one_back(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    v2 = _second(project)
    project.promote(1)
    cache = project.cache
    assert cache.current().version == 1
    read, go, promoting = threading.Event(), threading.Event(), threading.Event()
    real_alias = cache_module.repo.get_alias

    def slow_alias(s: Any, name: str) -> int | None:
        v = real_alias(s, name)
        if threading.current_thread().name == "watcher":  # it read v1, then stalls
            read.set()
            assert go.wait(30)
        return v

    monkeypatch.setattr(cache_module.repo, "get_alias", slow_alias)
    real_move = cache.move

    def move(version: int, commit: Any) -> Any:
        promoting.set()  # the promotion has begun: it commits under the cache's lock
        return real_move(version, commit)

    watcher = threading.Thread(target=cache.refresh, name="watcher")
    watcher.start()
    assert read.wait(30)
    monkeypatch.setattr(cache, "move", move)
    promoter = threading.Thread(target=project.promote, args=(v2,), name="promoter")
    promoter.start()
    assert promoting.wait(30)
    go.set()
    watcher.join(30)
    promoter.join(30)
    assert project.production_version() == v2
    assert cache.current().version == v2  # the watcher's stale read did not win


def test_a_stopped_server_leaves_the_cache_as_in_process_use_finds_it(project: Project) -> None:
    from fastapi.testclient import TestClient

    from flywheel.serving import create_app

    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1"):
        assert project.cache.current().backend.name == "onnx"
    v2 = _second(project)
    project.promote(v2)  # after the server: torch again, and no server hook called
    served = project.cache.current()
    assert served.version == v2 and served.backend.name == "torch"
