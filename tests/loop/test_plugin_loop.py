"""A plugin architecture from outside the repository goes round the loop: init → train →
serve → feedback → retrain (gated), and loads again in a fresh process — or is refused,
naming its distribution, where the plugin is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.data import digits_arrays
from flywheel.serving import create_app
from tests.factories import digit_png, make_project, write_class_folders

runner = CliRunner()
ORIGIN = {
    "plugin": "tiny",
    "entry_point": "tinyplug.nets:build",
    "distribution": "tinyplug",
    "version": "0.1.0",
}


def _spec(artifact_dir: str) -> dict:
    return json.loads((Path(artifact_dir) / "spec.json").read_text())


def _flywheel(args: list[str], site: Path | None) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process, with the plugin's folder on its path or not."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    code = "import sys; from flywheel.cli import main; sys.argv[0] = 'flywheel'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_a_plugin_goes_round_the_loop_and_loads_in_a_fresh_process(
    plugin_site: Path, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "p", settings={"arch": "tiny"})
    v1 = project.version_info(1)
    assert v1.arch == "tiny" and v1.aliases == ["candidate", "production"]
    assert _spec(v1.artifact_dir)["plugin"] == ORIGIN
    assert v1.training_config["epochs"] == 3  # the project's setting beats the plugin's 6

    _, labels = digits_arrays()
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        assert project.cache.held is not None and project.cache.held.backend.name == "onnx"
        for i in range(300, 340):
            user = {"X-User-Id": f"user{i % 4}"}
            png = {"file": ("d.png", digit_png(i), "image/png")}
            r = c.post("/v1/predict", files=png, headers=user)
            assert r.status_code == 200 and r.json()["model_version"] == 1
            answer = {"prediction_id": r.json()["prediction_id"], "label": str(labels[i])}
            r = c.post("/v1/feedback", json=answer, headers=user)
            assert r.status_code == 201

    result = project.retrain()
    assert result.feedback_used == 40
    assert result.train is not None
    t = result.train.to_json()
    assert (t["model_version"], t["champion_version"]) == (2, 1)
    assert t["rows"]["n"] == t["rows"]["holdout"] + t["rows"]["evaluation"]
    assert t["rows"]["champion_decoded"] == "as the challenger"  # the same spec: warm start
    v2 = project.version_info(2)
    assert v2.parent == 1 and v2.gate is not None and v2.gate["champion_version"] == 1
    assert _spec(v2.artifact_dir)["plugin"] == ORIGIN
    production = project.production_version()
    score = project.evaluate(production)["accuracy"]
    project.close()

    root = str(tmp_path / "p")
    fresh = _flywheel(["evaluate", "--project", root, "--json"], plugin_site)
    assert fresh.returncode == 0, fresh.stderr
    report = json.loads(fresh.stdout)
    assert (report["model_version"], report["accuracy"]) == (production, score)

    missing = _flywheel(["evaluate", "--project", root], None)
    assert missing.returncode == 1
    (line,) = [x for x in missing.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: model v{production} in ")
    assert "trained with the plugin architecture 'tiny', which needs the distribution " in line
    assert "'tinyplug' 0.1.0: it is not installed here" in line


def test_a_module_factory_architecture_from_init_and_train_on_the_cli(
    plugin_site: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    folders = write_class_folders(
        tmp_path / "data",
        {
            "dark": [rng.integers(0, 90, (8, 8), dtype=np.uint8) for _ in range(12)],
            "light": [rng.integers(160, 256, (8, 8), dtype=np.uint8) for _ in range(12)],
        },
    )
    root = tmp_path / "p"
    ref = "tinyplug.nets:build"
    r = runner.invoke(app, ["init", str(root), "--data", str(folders), "--arch", ref, "--json"])
    assert r.exit_code == 0, r.output
    assert f'arch = "{ref}"' in (root / "flywheel.toml").read_text()
    r = runner.invoke(app, ["train", "--project", str(root), "--epochs", "2", "--json"])
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout)
    assert trained["model_version"] == 1 and trained["promoted"] is True
    r = runner.invoke(app, ["models", "--project", str(root), "--json"])
    (model,) = json.loads(r.stdout)
    assert model["arch"] == ref
    spec = _spec(str(root / "models" / "v1"))
    assert spec["plugin"] == {"plugin": ref, "distribution": "tinyplug", "version": "0.1.0"}
    # `train --arch` takes a reference too, and refuses one that breaks the contract
    r = runner.invoke(app, ["train", "--project", str(root), "--arch", "tinyplug.nets:not_an_arch"])
    assert r.exit_code != 0
    assert "breaks the contract (returns an ArchInfo)" in str(r.exception)


def test_init_refuses_an_architecture_it_cannot_train_and_leaves_nothing(
    plugin_site: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    folders = write_class_folders(
        tmp_path / "data",
        {c: [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(6)] for c in "ab"},
    )
    for arch, message in (
        ("tinyplug.nets:nope", "module 'tinyplug.nets' has no attribute 'nope'"),
        ("mlp_regressor", "architecture 'mlp_regressor' reads tabular for regression"),
    ):
        root = tmp_path / arch.replace(":", "_")
        r = runner.invoke(app, ["init", str(root), "--data", str(folders), "--arch", arch])
        assert r.exit_code != 0
        assert message in str(r.exception)
        assert not root.exists()
