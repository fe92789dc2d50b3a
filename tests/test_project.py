"""The Project verbs: reproducibility, warm start, the held-out wall, lineage, the gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN
from flywheel.registry import load_artifact
from flywheel.store.schema import DatasetVersion, DatasetVersionExample, Example
from tests.factories import digit_png, make_project


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


def test_feedback_on_a_held_out_image_is_never_trained_on(project: Project) -> None:
    with project.db.session() as s:
        holdout_hash = s.scalars(select(Example.input_hash).where(Example.split == HOLDOUT)).first()
    held_png = project.blobs.get(holdout_hash)
    p1 = project.predict(held_png, user_id="u1")
    project.record_feedback(p1.prediction_id, label="3", user_id="u1")
    p2 = project.predict(digit_png(500), user_id="u2")
    project.record_feedback(p2.prediction_id, label="8", user_id="u2")

    result = project.retrain()
    assert result.curation["dropped_holdout"] == 1
    assert result.feedback_used == 1
    with project.db.session() as s:
        dv = s.scalars(select(DatasetVersion).order_by(DatasetVersion.id.desc())).first()
        train_hashes = set(
            s.scalars(
                select(Example.input_hash)
                .join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id)
                .where(DatasetVersionExample.dataset_version_id == dv.id, Example.split == TRAIN)
            )
        )
        new = s.scalars(select(Example).where(Example.origin == "feedback")).one()
    assert holdout_hash not in train_hashes
    assert (new.label, new.user_id, new.split) == ("8", project.pseudonym("u2"), TRAIN)
    assert new.feedback_id is not None
    assert dv.parent_id == 1
    assert dv.stats["n_feedback"] == 1


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


def test_retrain_without_feedback_trains_nothing(project: Project) -> None:
    result = project.retrain()
    assert result.train is None
    assert result.skipped_reason == "no new feedback with a usable label since the last retrain"
    assert [v.version for v in project.models()] == [1]


def test_feedback_is_used_once(project: Project) -> None:
    p = project.predict(digit_png(600), user_id="u1")
    project.record_feedback(p.prediction_id, correct=True, user_id="u1")
    first = project.retrain()
    assert first.feedback_used == 1
    second = project.retrain()
    assert second.train is None
    assert second.curation["answers"] == 0


def test_reopening_a_project_keeps_everything(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    pid = project.predict(digit_png(1)).prediction_id
    project.close()
    again = Project.open(tmp_path / "p")
    assert again.production_version() == 1
    again.record_feedback(pid, label="1")
    assert again.dataset().version == 1
    again.close()
