"""``predict-batch`` on Ray Data, on the session's two-node cluster: a pool of two actors
(one CPU each, so one per node) holding production's ONNX graph answers what the
in-process scorer answers, row for row, and every row is logged as a served call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel import Project
from flywheel.errors import ConfigError
from tests.factories import digit_png, make_project
from tests.on_ray.cluster import LocalCluster


@pytest.fixture(scope="module")
def project(
    ray_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("batch") / "p"
    make_project(root).close()
    p = Project.open(root, ray_address=ray_cluster.address)
    yield p
    p.close()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_on_ray_the_answers_are_the_in_process_ones_and_every_row_is_logged(
    project: Project, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    for i in range(500, 548):
        (folder / str(i % 3)).mkdir(parents=True, exist_ok=True)
        (folder / str(i % 3) / f"{i}.png").write_bytes(digit_png(i))
    (folder / "0" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    before = project.stats()["calls"]["total"]
    on_ray = project.predict_batch(
        folder, on="ray", out=tmp_path / "ray.jsonl", batch_size=8, actors=2
    )
    local = project.predict_batch(folder, on="local", out=tmp_path / "local.jsonl", batch_size=8)
    assert (on_ray.on, on_ray.actors, local.on) == ("ray", 2, "local")
    assert (len(on_ray.scorers), len(local.scorers)) == (2, 1)  # both actors scored rows
    assert (on_ray.rows, on_ray.scored, on_ray.bad) == (local.rows, local.scored, local.bad)
    assert (on_ray.scored, on_ray.bad) == (48, 1)
    assert on_ray.graph_sha256 == local.graph_sha256 is not None
    a, b = _lines(tmp_path / "ray.jsonl"), _lines(tmp_path / "local.jsonl")
    assert [r["input"] for r in a] == [r["input"] for r in b]  # input order, both ways
    for x, y in zip(a, b, strict=True):
        if "error" in x:
            assert x["error"] == y["error"] and x["input"] == "0/bad.png"
            continue
        assert x["label"] == y["label"]
        assert (
            max(abs(x["probabilities"][k] - y["probabilities"][k]) for k in x["probabilities"])
            <= 1e-6
        )
        assert x["prediction_id"] != y["prediction_id"]
    # Both runs' rows are in the log, their inputs in the blobs.
    assert project.stats()["calls"]["total"] == before + 96
    assert project.stored_input(a[1]["prediction_id"]) == digit_png(int(a[1]["input"][2:-4]))


def test_the_cli_scores_a_manifest_on_the_cluster_of_ray_address(
    project: Project, tmp_path: Path
) -> None:
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(600, 610):
        (tmp_path / "img" / f"{i}.png").write_bytes(digit_png(i))
        lines.append(json.dumps({"id": f"n{i}", "path": f"img/{i}.png"}))
    lines.append("{broken")
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    exe = str(Path(sys.executable).with_name("flywheel"))
    cmd = [exe, "predict-batch", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o.csv"),
           "-p", str(project.settings.project_dir), "--batch-size", "4", "--json"]  # fmt: skip
    # FLYWHEEL_RAY_ADDRESS (the session fixture's) makes Ray the default
    assert os.environ["FLYWHEEL_RAY_ADDRESS"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    body = json.loads(run.stdout)
    assert (body["on"], body["rows"], body["scored"], body["bad"]) == ("ray", 11, 10, 1)
    assert body["bad_examples"][0]["input"] == "m.jsonl:11"
    assert body["bad_examples"][0]["error"].startswith("not JSON")
    rows = (tmp_path / "o.csv").read_text().splitlines()
    assert rows[0].startswith("input,prediction_id,model_version,p_0,")
    assert [r.split(",")[0] for r in rows[1:]] == [f"n{i}" for i in range(600, 610)] + [
        "m.jsonl:11"
    ]


def test_more_actors_than_the_cluster_has_cpus_is_refused(project: Project, tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(digit_png(0))
    with pytest.raises(ConfigError, match="batch_actors = 3 but the Ray cluster has 2 CPUs"):
        project.predict_batch(tmp_path, on="ray", actors=3)
