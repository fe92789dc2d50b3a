"""The one model cache: production in memory, swapped at once by promote and rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel import Project
from flywheel.errors import ModelError
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
