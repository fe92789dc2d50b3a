"""Confident learning on a project: planted label errors are found and left out of training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from flywheel import Project
from flywheel.cli import app
from flywheel.data import ListSource, RawExample
from tests.factories import FAST, digits_subset


def noisy_project(root: Path, settings: dict[str, Any] | None = None) -> tuple[Project, set[str]]:
    base = digits_subset(400, 100)
    rng = np.random.default_rng(0)
    flipped: set[str] = set()
    rows = []
    for ex in base:
        if ex.split == "train" and rng.random() < 0.15:
            wrong = str((int(str(ex.label)) + 1 + int(rng.integers(0, 9))) % 10)
            rows.append(RawExample(ex.content, wrong, split=ex.split, source_path=ex.source_path))
            flipped.add(str(ex.source_path))
        else:
            rows.append(ex)
    cfg = {**FAST, "epochs": 15, "patience": 15, **(settings or {})}
    return Project.init(root, ListSource("noisy digits", rows), settings=cfg), flipped


def test_planted_label_errors_are_found(tmp_path: Path) -> None:
    project, flipped = noisy_project(tmp_path / "p")
    before = project.dataset().content_hash
    found = project.find_label_issues(folds=3)
    flagged = {str(i["source_path"]) for i in found["issues"]}
    hits = len(flagged & flipped)
    assert hits / len(flagged) >= 0.7  # precision
    assert hits / len(flipped) >= 0.6  # recall
    assert found["dataset_version"] == 1
    assert project.dataset().content_hash == before  # an analysis, not a new version
    assert project.dataset().stats["label_issues"]["n_issues"] == len(flagged)
    project.close()


@pytest.mark.parametrize(("mode", "expected"), [("exclude", 0.0), ("down-weight", 0.2)])
def test_training_leaves_flagged_rows_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, expected: float
) -> None:
    project, _ = noisy_project(tmp_path / "p", {"label_issue_mode": mode})
    found = project.find_label_issues(folds=3, config=project.train_config(epochs=5))
    seen: dict[str, Any] = {}
    import flywheel.loop.train as module

    real_fit = module.fit

    def spy(model: Any, train: Any, *args: Any, **kwargs: Any) -> Any:
        seen["weights"] = None if train.weights is None else train.weights.copy()
        return real_fit(model, train, *args, **kwargs)

    monkeypatch.setattr(module, "fit", spy)
    project.train()
    weights = seen["weights"]
    assert weights is not None
    assert int((weights == np.float32(expected)).sum()) == found["n_issues"]
    assert int((weights == 1.0).sum()) == len(weights) - found["n_issues"]
    project.close()


def test_data_issues_cli(tmp_path: Path) -> None:
    project, _ = noisy_project(tmp_path / "p")
    root = str(project.settings.project_dir)
    project.close()
    r = CliRunner().invoke(
        app, ["data", "issues", "--project", root, "--folds", "3", "--epochs", "5", "--json"]
    )
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)
    assert body["n_rows"] == 400
    assert {"given", "suggested", "self_confidence", "source_path"} <= set(body["issues"][0])
