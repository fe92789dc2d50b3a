"""Verified artifacts: a changed or missing file is refused with its name, a promotion
moves production only once the version loaded and answered, and a copied project loads
its own models."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from flywheel import Project
from flywheel.cli import main
from flywheel.errors import ModelError
from flywheel.registry import SPEC, WEIGHTS
from flywheel.serving import create_app
from flywheel.store.schema import ModelVersion
from tests.factories import digit_png, make_project


@pytest.fixture(scope="function")
def two(tmp_path: Path) -> Iterator[Project]:
    """v1 in production, v2 registered beside it (the candidate)."""
    project = make_project(tmp_path / "p", settings={"auto_promote": False})
    project.train(project.train_config(seed=4, warm_start=False))
    assert project.production_version() == 1
    yield project
    project.close()


def _folder(project: Project, version: int) -> Path:
    return Path(project.version_info(version).artifact_dir)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_refused_and_production_stays(two: Project) -> None:
    _flip_a_byte(_folder(two, 2) / WEIGHTS)
    with pytest.raises(ModelError, match=r"model v2 in .*: model.safetensors does not match"):
        two.promote(2)
    assert two.production_version() == 1
    assert two.cache.current().version == 1
    assert two.predict(digit_png(3)).model_version == 1
    # Every other load refuses it too: evaluate, export.
    with pytest.raises(ModelError, match=re.escape("model.safetensors does not match")):
        two.evaluate(2)
    with pytest.raises(ModelError, match=re.escape("model.safetensors does not match")):
        two.export(2, two.settings.project_dir / "bundle")


def test_an_edited_spec_is_refused_even_when_it_still_loads(two: Project) -> None:
    spec_file = _folder(two, 2) / SPEC
    spec = json.loads(spec_file.read_text())
    spec["labels"] = spec["labels"][::-1]  # loads fine, answers every class wrongly
    spec_file.write_text(json.dumps(spec, indent=2, sort_keys=True))
    with pytest.raises(ModelError, match=re.escape("spec.json does not match")):
        two.promote(2)
    assert two.production_version() == 1


def test_a_missing_file_is_named(two: Project) -> None:
    (_folder(two, 2) / WEIGHTS).unlink()
    with pytest.raises(ModelError, match=re.escape("is incomplete: model.safetensors is missing")):
        two.promote(2)
    assert two.production_version() == 1


def test_a_version_that_does_not_answer_is_never_promoted(two: Project) -> None:
    # Weights that load and verify (their hash recorded as they are) but answer NaN.
    folder = _folder(two, 2)
    model = two.cache.load(2).model
    nan = {k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}
    save_file(nan, str(folder / WEIGHTS), metadata={"arch": "seed_cnn"})
    with two.db.session() as s:
        row = s.get(ModelVersion, 2)
        assert row is not None
        row.weights_sha256 = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    with pytest.raises(ModelError, match=r"v2 failed its self-check: .*not finite"):
        two.promote(2)
    assert two.production_version() == 1


def test_a_refused_promotion_over_http_and_the_cli_leaves_production(
    two: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = two.create_key(["admin"])
    _flip_a_byte(_folder(two, 2) / WEIGHTS)
    with TestClient(create_app(two.settings, two), base_url="http://127.0.0.1") as client:
        r = client.post("/v1/models/2/promote", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 503
        assert "model.safetensors does not match" in r.json()["detail"]
        health = client.get("/healthz").json()
        assert health == {"status": "ok", "production_version": 1, "serving_version": 1}
    root = str(two.settings.project_dir)
    monkeypatch.setattr("sys.argv", ["flywheel", "promote", "2", "--project", root])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "error:" in err and "model.safetensors does not match" in err
    assert two.production_version() == 1


def test_a_rollback_to_a_damaged_version_is_refused(two: Project) -> None:
    two.promote(2)
    _flip_a_byte(_folder(two, 1) / WEIGHTS)
    with pytest.raises(ModelError, match=r"model v1 .*does not match"):
        two.rollback()
    assert two.production_version() == 2


def test_a_copied_project_loads_its_own_models(two: Project, tmp_path: Path) -> None:
    with two.db.session() as s:
        row = s.get(ModelVersion, 1)
        assert row is not None and row.artifact_dir == "models/v1"  # relative
        assert row.spec_sha256 is not None
    two.close()
    copy = tmp_path / "copy"
    shutil.copytree(two.settings.project_dir, copy)
    _flip_a_byte(two.settings.project_dir / "models" / "v1" / WEIGHTS)  # the original only
    moved = Project.open(copy)
    assert Path(moved.version_info(1).artifact_dir) == copy / "models" / "v1"
    assert moved.predict(digit_png(3)).model_version == 1
    moved.close()


def test_a_changed_serving_graph_is_exported_again_from_the_verified_weights(
    project: Project,
) -> None:
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1"):
        recorded = project.version_info(1).graph_sha256
        assert recorded is not None
    graph = _folder(project, 1) / "serving.onnx"
    _flip_a_byte(graph)
    damaged = hashlib.sha256(graph.read_bytes()).hexdigest()
    restarted = Project.open(project.settings.project_dir)  # a server starting afresh
    with TestClient(
        create_app(restarted.settings, restarted), base_url="http://127.0.0.1"
    ) as client:
        r = client.post("/v1/predict", files={"file": ("d.png", digit_png(3), "image/png")})
        assert r.status_code == 200
        assert restarted.cache.current().backend.name == "onnx"
    exported = hashlib.sha256(graph.read_bytes()).hexdigest()
    assert exported != damaged  # the damaged graph was not used
    assert restarted.version_info(1).graph_sha256 == exported  # and the new one is on record
    restarted.close()
