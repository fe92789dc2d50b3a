"""Feedback's services on their own: answers committed together or refused one by one,
read back weighted by their users' trust, curated into a dataset version."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from flywheel import Project
from flywheel.errors import InputError, NotFoundError
from flywheel.feedback.records import FeedbackIn, FeedbackResult
from flywheel.feedback.trust import PRIOR_TRUST
from flywheel.store.schema import Feedback, User, utcnow
from tests.factories import digit_png


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
