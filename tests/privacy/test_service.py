"""Privacy's service on its own: admission to a private run, blobs a forget leaves, the
erasure as one transaction."""

from __future__ import annotations

import numpy as np
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


def test_a_forget_reaches_the_journal_and_a_replay_never_brings_the_user_back(
    project: Project,
) -> None:
    from datetime import UTC, datetime

    from flywheel.feedback.records import answer
    from flywheel.store.journal import read_segment

    def row(user: str, content: bytes) -> dict[str, object]:
        probs = [0.0] * 10
        probs[3] = 1.0
        _, r = answer(
            1,
            [str(i) for i in range(10)],
            np.array(probs, np.float32),
            content=content,
            user_id=project.pseudonym(user),
            latency_ms=1.0,
        )
        return r

    project.predict(digit_png(1), user_id="alice")
    # A server killed before its commit left these (made before the forget below).
    before = [row("alice", b"a1"), row("bob", b"b1")]
    live, orphan = project.prediction_journal(), project.prediction_journal()
    live.append(row("alice", b"a0"))
    live.sync()  # a segment a live server holds: the forget leaves it to its owner
    for r in before:
        orphan.append(r)
    orphan.sync()
    orphan.close()
    out = project.forget("alice")
    assert out["spill_rows_deleted"] == 1  # alice's row in the orphaned segment
    segments = sorted(project.services.predictions.journal_dir.glob("*.journal"))
    rows = [r["user_id"] for f in segments for r in read_segment(f)[0]]
    assert rows.count(project.pseudonym("alice")) == 1  # the live one
    live.close()  # the server died: its segment is an orphan now
    again = project.prediction_journal()
    made_later = row("alice", b"a2")  # alice came back after the forget
    made_later["created_at"] = datetime.now(UTC)
    again.append(made_later)
    again.sync()
    again.close()
    report = project.services.predictions.replay_journal()
    assert (report.committed, report.forgotten) == (2, 1)  # bob's and alice's later one
    with project.db.session() as s:
        users = s.scalars(select(Prediction.user_id)).all()
    assert users.count(project.pseudonym("alice")) == 1
    assert users.count(project.pseudonym("bob")) == 1
