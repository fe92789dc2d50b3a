"""One turn of the loop: the held-out wall, feedback used once, nothing to curate."""

from __future__ import annotations

from sqlalchemy import select

from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN
from flywheel.store.schema import DatasetVersion, DatasetVersionExample, Example
from tests.factories import digit_png


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
