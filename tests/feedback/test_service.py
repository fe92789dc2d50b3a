"""Feedback's services on their own: answers committed together or refused one by one,
read back weighted by their users' trust, curated into a dataset version."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from flywheel import Project
from flywheel.errors import InputError, NotFoundError
from flywheel.feedback.records import FeedbackIn, FeedbackResult
from flywheel.feedback.trust import PRIOR_TRUST
from flywheel.store.schema import Example, Feedback, User, utcnow
from tests.factories import digit_png, digits_arrays, make_project


def test_a_batch_commits_the_good_answers_and_gives_each_bad_one_its_error(
    project: Project,
) -> None:
    p = project.predict(digit_png(400), user_id="ann")
    out = project.services.feedback.record_many(
        [
            FeedbackIn(p.prediction_id, label="3", user_id="ann"),
            FeedbackIn("no-such-prediction", label="3"),
            FeedbackIn(p.prediction_id, label="cat"),
            FeedbackIn(p.prediction_id),
            FeedbackIn(p.prediction_id, correct=True, user_id="bad id!"),
        ]
    )
    assert isinstance(out[0], FeedbackResult) and out[0].label == "3"
    assert isinstance(out[1], NotFoundError)
    assert isinstance(out[2], InputError) and "not one of model v1's labels" in str(out[2])
    assert isinstance(out[3], InputError) and "needs a 'label'" in str(out[3])
    assert isinstance(out[4], InputError) and "user id" in str(out[4])
    with project.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Feedback)) == 1


def test_answers_weigh_by_the_users_trust_in_that_label_and_hold_quarantine_back(
    project: Project,
) -> None:
    for user, i, label in (("new", 401, "1"), ("known", 402, "2"), ("known", 403, "7"),
                           ("held", 404, "4")):  # fmt: skip
        p = project.predict(digit_png(i), user_id=user)
        project.record_feedback(p.prediction_id, label=label, user_id=user)
    with project.db.session() as s:
        known = s.get(User, project.pseudonym("known"))
        held = s.get(User, project.pseudonym("held"))
        assert known is not None and held is not None
        known.trust, known.trust_detail = 0.8, {"label_trust": {"2": 0.3}}
        held.quarantined_at = utcnow()
    answers, held_back = project.services.feedback.answers()
    weight = {a.label: a.weight for a in answers}
    assert weight == {"1": PRIOR_TRUST, "2": 0.3, "7": 0.8}  # prior, label trust, trust
    assert pytest.approx(2 / 3) == PRIOR_TRUST
    assert held_back == 1
    naive, held_back = project.services.feedback.answers(naive=True)
    assert sorted(a.weight for a in naive) == [1.0] * 4 and held_back == 0


def test_curation_makes_a_version_that_says_who_gave_its_rows(project: Project) -> None:
    for user, i in (("ann", 405), ("ann", 406), ("bob", 407)):
        p = project.predict(digit_png(i), user_id=user)
        project.record_feedback(p.prediction_id, correct=True, user_id=user)
    info, summary = project.services.feedback.curate(naive=True)
    assert info is not None and info.parent == 1 and info.n_feedback == 3
    assert summary["rows"] == 3 and summary["answers"] == 3
    who = info.stats["contribution"]
    assert who["rows"] == 3 and who["users"] == 2
    assert who["top_user"] == project.pseudonym("ann") and who["top_user_share"] == 0.6667
    assert who["first_feedback"] is True  # nothing came from feedback before
    # Used once: the same answers curate into nothing the next time.
    again, summary = project.services.feedback.curate(naive=True)
    assert again is None and summary["answers"] == 0


def test_trusted_answers_grow_an_evaluation_split_that_no_training_sees(tmp_path: Path) -> None:
    # (No cap on one user's share: every answer becomes a row at once.)
    project = make_project(tmp_path / "proj", settings={"max_user_share": 1.0})
    _, labels = digits_arrays()
    for user, indices in (("sure", range(300, 360)), ("new", range(360, 400))):
        for i in indices:
            p = project.predict(digit_png(i), user_id=user)
            project.record_feedback(p.prediction_id, label=str(labels[i]), user_id=user)
    with project.db.session() as s:
        sure = s.get(User, project.pseudonym("sure"))
        assert sure is not None
        sure.trust = 0.9  # checked; "new" stays at the prior, below eval_min_trust
    info, summary = project.services.feedback.curate(naive=False)
    assert info is not None and info.n_evaluation == summary["evaluation_rows"] > 0
    ds = project.services.data.training_set()
    evaluation = {h for h, *_ in ds.evaluation}
    assert len(evaluation) == info.n_evaluation
    assert not evaluation & {h for h, *_ in ds.train}  # never trained on
    with project.db.session() as s:
        owners = set(s.scalars(select(Example.user_id).where(Example.split == "evaluation")))
        per_label = Counter(s.scalars(select(Example.label).where(Example.split == "evaluation")))
        fed = Counter(s.scalars(select(Example.label).where(Example.origin == "feedback")))
    assert owners == {project.pseudonym("sure")}
    # Stratified: no label holds more than its share (rounded) of the feedback rows.
    share = project.settings.eval_share
    assert all(n <= int(share * fed[lab] + 0.5) for lab, n in per_label.items())
    # Another answer about an evaluation input never becomes a training row.
    digest = sorted(evaluation)[0]
    i = next(i for i in range(300, 360) if project.blobs.put(digit_png(i)) == digest)
    p = project.predict(digit_png(i), user_id="late")
    project.record_feedback(p.prediction_id, label=str(labels[i]), user_id="late")
    again, summary = project.services.feedback.curate(naive=False)
    assert again is None and summary["dropped_holdout"] == 1
    project.close()


def test_naive_curation_sets_nothing_aside(project: Project) -> None:
    p = project.predict(digit_png(300), user_id="ann")
    project.record_feedback(p.prediction_id, correct=True, user_id="ann")
    info, summary = project.services.feedback.curate(naive=True)
    assert info is not None and info.n_evaluation == 0 and summary["evaluation_rows"] == 0
