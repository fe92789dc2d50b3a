"""Privacy's service on its own: admission to a private run, blobs a forget leaves, the
erasure as one transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from flywheel import Project
from flywheel.privacy import service as privacy_service
from flywheel.store.schema import Feedback, Prediction, PrivacyCharge, User
from tests.factories import digit_png


def test_a_blob_a_row_came_to_need_during_the_delete_is_put_back(project: Project) -> None:
    a, b = project.blobs.put(b"bytes of a"), project.blobs.put(b"bytes of b")
    # As if a request with b's bytes was logged between the check and the delete.
    deleted = project.services.privacy.delete_unreferenced({a, b}, lambda _s, hashes: {b} & hashes)
    assert deleted == 1
    assert not project.blobs.exists(a)
    assert project.blobs.get(b) == b"bytes of b"


def test_admission_leaves_out_the_users_a_run_would_take_over_budget(project: Project) -> None:
    budget = project.settings.dp_user_budget  # 10
    spent, fresh = project.pseudonym("spent"), project.pseudonym("fresh")
    assert spent is not None and fresh is not None
    with project.db.session() as s:
        s.add_all([User(id=spent), User(id=fresh)])
        s.flush()
        s.add(PrivacyCharge(user_id=spent, model_version=1, epsilon=budget - 1, delta=1e-5, rows=2))
    rows = [
        ("a" * 64, "1", None, None, spent),
        ("b" * 64, "2", None, None, spent),
        ("c" * 64, "3", None, None, fresh),
        ("d" * 64, "4", None, None, None),  # imported rows are on no one's ledger
    ]
    kept, info = project.services.privacy.admit(rows, project.train_config(dp_epsilon=2.0))
    assert kept == rows[2:]
    assert info == {
        "budget": budget,
        "users_left_out": 1,
        "rows_left_out": 2,
        "left_out": {spent: {"spent": budget - 1, "rows": 2}},
    }
    # Within budget: everyone is in.
    kept, info = project.services.privacy.admit(rows, project.train_config(dp_epsilon=0.5))
    assert kept == rows and info["users_left_out"] == 0


def test_an_erasure_that_fails_half_way_changes_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project.predict(digit_png(300), user_id="theo")
    project.record_feedback(p.prediction_id, label="3", user_id="theo")

    def broken(*_a: object, **_k: object) -> dict[str, object]:
        raise RuntimeError("the disk is full")

    # The alias moves come after the rows are deleted, inside the same transaction.
    monkeypatch.setattr(privacy_service.registry_repo, "withdraw", broken)
    with pytest.raises(RuntimeError, match="disk is full"):
        project.services.privacy.erase("theo")
    theo = project.pseudonym("theo")
    with project.db.session() as s:
        assert s.get(User, theo) is not None
        assert s.scalar(select(func.count()).where(Prediction.user_id == theo)) == 1
        assert s.scalar(select(func.count()).where(Feedback.user_id == theo)) == 1
    assert project.audit_log("forget") == []
    with project.db.session() as s:
        digest = s.get(Prediction, p.prediction_id).input_hash  # type: ignore[union-attr]
    assert project.blobs.exists(digest)  # the bytes go only once the erasure committed
