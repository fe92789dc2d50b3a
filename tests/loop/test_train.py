"""The train workflow: reproducibility, warm start, and the gate's decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

from flywheel import Project
from flywheel.registry import load_artifact


def weights(project: Project, version: int) -> dict[str, torch.Tensor]:
    info = next(v for v in project.models() if v.version == version)
    model, _ = load_artifact(Path(info.artifact_dir))
    return model.state_dict()


def test_a_fixed_seed_gives_the_same_model_twice(project: Project) -> None:
    config = project.train_config(warm_start=False)
    project.train(config)
    project.train(config)
    shas = {}
    with project.db.session() as s:
        from flywheel.store.schema import ModelVersion

        for mv in s.scalars(select(ModelVersion)):
            shas[mv.version] = mv.weights_sha256
    assert shas[1] == shas[2] == shas[3]
    other = project.train(project.train_config(warm_start=False, seed=5)).model.version
    with project.db.session() as s:
        assert s.get(ModelVersion, other).weights_sha256 != shas[1]


def test_warm_start_begins_from_the_production_weights(project: Project) -> None:
    frozen = {"epochs": 1, "learning_rate": 1e-12}
    warm = project.train(project.train_config(warm_start=True, **frozen)).model
    cold = project.train(project.train_config(warm_start=False, seed=9, **frozen)).model
    assert warm.parent == 1
    v1 = weights(project, 1)
    for name, tensor in weights(project, warm.version).items():
        assert torch.allclose(tensor, v1[name], atol=1e-6), name
    assert any(
        not torch.allclose(t, v1[n], atol=1e-3) for n, t in weights(project, cold.version).items()
    )


def test_the_gate_refuses_a_worse_challenger_and_keeps_production(project: Project) -> None:
    # One epoch at a vanishing learning rate from a fresh start: a model no better than chance.
    bad = project.train(project.train_config(warm_start=False, epochs=1, learning_rate=1e-12))
    assert bad.promoted is False
    assert bad.decision.challenger_score < bad.decision.champion_score
    assert "trails champion v1" in bad.decision.reason
    assert project.production_version() == 1
    info = next(v for v in project.models() if v.version == bad.model.version)
    assert info.aliases == ["candidate"]
    assert info.gate is not None
    assert info.gate["promoted"] is False
    assert info.gate["test"]["champion_only_correct"] > info.gate["test"]["challenger_only_correct"]


def test_the_gate_promotes_a_challenger_that_does_not_lose(project: Project) -> None:
    good = project.train(project.train_config(epochs=6))
    acc = np.round([good.decision.challenger_score, good.decision.champion_score], 6)
    assert acc[0] >= acc[1]
    assert good.promoted is True
    assert project.production_version() == good.model.version
