"""One turn of the loop: the held-out wall, feedback used once, nothing to curate."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN
from flywheel.store.schema import DatasetVersion, DatasetVersionExample, Example
from tests.factories import digit_png, digits_arrays, make_project


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


def test_the_gate_scores_on_the_held_out_and_the_evaluation_split(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", settings={"max_user_share": 1.0})
    _, labels = digits_arrays()
    for i in range(300, 400):  # each image answered by two users, who agree
        for user in (f"u{i % 4}", f"u{(i + 1) % 4}"):
            p = project.predict(digit_png(i), user_id=user)
            project.record_feedback(p.prediction_id, label=str(labels[i]), user_id=user)
    result = project.retrain()
    assert result.train is not None and result.dataset is not None
    n_eval = result.dataset.n_evaluation
    # Users who agree with each other earn the trust the split asks for.
    assert n_eval > 0 and result.curation["evaluation_rows"] == n_eval
    d = result.train.decision
    assert d.splits["holdout"]["n"] == result.dataset.n_holdout
    assert d.splits["evaluation"]["n"] == n_eval
    assert d.splits["combined"]["n"] == d.n == result.dataset.n_holdout + n_eval
    # The decision is made on both; each split's score is the share of its rows right.
    both = d.splits["holdout"]["challenger"] * result.dataset.n_holdout
    both += d.splits["evaluation"]["challenger"] * n_eval
    assert both / d.n == pytest.approx(d.challenger_score, abs=1e-3)
    assert f"{n_eval} evaluation rows" in d.reason
    # The version's own metric stays the held-out split's: comparable across versions.
    assert result.train.model.metrics["accuracy"] == pytest.approx(
        d.splits["holdout"]["challenger"], abs=1e-4
    )
    project.close()
