"""Learning from users: the review queue, trust, quarantine, and curation that uses them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from flywheel import Project
from flywheel.data import digits_arrays
from flywheel.serving import create_app
from flywheel.store.schema import Example, Feedback, Prediction, ReviewItem
from tests.factories import digit_png, make_project

LABELS = digits_arrays()[1]


@pytest.fixture(scope="function")
def client(project: Project) -> Iterator[TestClient]:
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="function")
def admin(project: Project) -> dict[str, str]:
    key, _ = project.create_key(["admin"])
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="function")
def reviewer(project: Project) -> dict[str, str]:
    """A reviewer's key: the queue hands out other users' predictions."""
    key, _ = project.create_key(["feedback"])
    return {"Authorization": f"Bearer {key}"}


def ask(c: TestClient, i: int, user: str | None = None) -> str:
    headers = {"X-User-Id": user} if user else {}
    r = c.post("/v1/predict", files={"file": ("d.png", digit_png(i), "image/png")}, headers=headers)
    assert r.status_code == 200
    return str(r.json()["prediction_id"])


def answer(
    c: TestClient, pid: str, label: str, user: str, key: dict[str, str] | None = None
) -> None:
    r = c.post(
        "/v1/feedback",
        json={"prediction_id": pid, "label": label},
        headers={"X-User-Id": user, **(key or {})},
    )
    assert r.status_code == 201, r.text


def test_review_queue_ranks_by_margin_hides_golden_probes_and_marks_feedback(
    client: TestClient, project: Project, reviewer: dict[str, str]
) -> None:
    pids = [ask(client, i) for i in range(400, 440)]
    r = client.get("/v1/review-queue", params={"limit": 10}, headers=reviewer)
    assert r.status_code == 200
    body = r.json()
    assert body["strategy"] == "margin"
    items = body["items"]
    assert len(items) == 10
    assert all(set(i) == {"prediction_id", "score", "strategy", "top", "reason"} for i in items)
    with project.db.session() as s:
        golden = {
            ri.prediction_id
            for ri in s.scalars(select(ReviewItem).where(ReviewItem.golden_example_id.is_not(None)))
        }
    assert len(golden) == 1  # golden_share 0.1 of 10
    ranked = [i for i in items if i["prediction_id"] not in golden]
    assert all(i["prediction_id"] in pids for i in ranked)
    scores = [i["score"] for i in ranked]
    assert scores == sorted(scores, reverse=True)
    # The queue picked the least decided predictions of the 40.
    with project.db.session() as s:
        from flywheel.store.schema import Prediction

        margins = {}
        for p in s.scalars(select(Prediction).where(Prediction.id.in_(pids))):
            top2 = sorted(p.probabilities.values(), reverse=True)[:2]
            margins[p.id] = 1 - (top2[0] - top2[1])
    assert min(scores) >= sorted(margins.values(), reverse=True)[len(ranked) - 1] - 1e-9
    assert items[0]["reason"].startswith("margin ")

    first = ranked[0]["prediction_id"]
    answer(client, first, "3", "alice", reviewer)
    other = next(p for p in pids if p not in {i["prediction_id"] for i in items})
    answer(client, other, "3", "alice", reviewer)
    with project.db.session() as s:
        via = dict(s.execute(select(Feedback.prediction_id, Feedback.via_queue)).all())
    assert via == {first: True, other: False}
    # Answered items leave the queue.
    again = client.get("/v1/review-queue", params={"limit": 40}, headers=reviewer).json()["items"]
    assert first not in {i["prediction_id"] for i in again}


def test_review_queue_rejects_an_unknown_strategy(
    client: TestClient, reviewer: dict[str, str]
) -> None:
    r = client.get("/v1/review-queue", params={"strategy": "loudest"}, headers=reviewer)
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "unknown strategy 'loudest'; known: margin, entropy, least_confidence, random"
    )


def test_trust_quarantine_and_curation_hold_a_liar_back(
    client: TestClient, project: Project, admin: dict[str, str]
) -> None:
    honest = ["h1", "h2", "h3"]
    # Everyone answers the same 12 images; the liar always says the next digit.
    truth_of: dict[str, str] = {}  # prediction id -> the image's true label
    for i in range(300, 312):
        truth = str(LABELS[i])
        for user in honest:
            truth_of[pid := ask(client, i, user)] = truth
            answer(client, pid, truth, user)
        truth_of[pid := ask(client, i, "liar")] = truth
        answer(client, pid, str((LABELS[i] + 1) % 10), "liar")
    # Stored and listed under keyed hashes only.
    trust = project.update_trust()
    p = {u: project.pseudonym(u) for u in [*honest, "liar"]}
    assert set(trust) == set(p.values())
    assert min(trust[p[u]]["trust"] for u in honest) > 0.8
    assert trust[p["liar"]]["trust"] < 0.3
    assert trust[p["liar"]]["compared_with_others"] == 36
    assert trust[p["liar"]]["agreed_with_others"] == 0

    users = {u["user_id"]: u for u in client.get("/v1/users", headers=admin).json()}
    assert users[p["liar"]]["quarantined"] is True
    assert users[p["liar"]]["quarantine_reason"].startswith("trust 0.")
    assert users[p["h1"]]["quarantined"] is False
    assert client.get("/v1/users").status_code == 401

    result = project.retrain()
    assert result.curation["quarantined"] == 12
    assert result.feedback_used == 12  # one row per image, by the honest majority
    with project.db.session() as s:
        rows = s.scalars(select(Example).where(Example.origin == "feedback")).all()
        assert {r.user_id for r in rows} <= {p[u] for u in honest}
        preds = s.scalars(select(Prediction).where(Prediction.id.in_(truth_of))).all()
        truth_of_input = {p.input_hash: truth_of[p.id] for p in preds}
        assert len(rows) == 12 and all(r.label == truth_of_input[r.input_hash] for r in rows)
        assert all(0.8 < (r.weight or 0) <= 1 for r in rows)

    # Released, the liar's held-back answers are considered again; all 36 answers not
    # turned into rows (the liar's 12, the honest duplicates 24) are about known inputs.
    # Named by the raw id (hashed on the way in) or by the listed pseudonym alike.
    r = client.delete("/v1/users/liar/quarantine", headers=admin)
    assert r.status_code == 200
    assert r.json()["quarantined"] is False
    again = project.retrain()
    assert again.curation["quarantined"] == 0
    assert again.curation["dropped_known"] == 36
    assert again.train is None
    r = client.post("/v1/users/nobody/quarantine", headers=admin, json={"reason": "x"})
    assert r.status_code == 404
    assert r.json()["detail"] == "user 'nobody' not found"


def test_one_user_cannot_give_most_of_a_retrain(project: Project, client: TestClient) -> None:
    for i in range(500, 520):
        answer(client, ask(client, i, "bulk"), str(LABELS[i]), "bulk")
    for n, i in enumerate(range(520, 526)):
        answer(client, ask(client, i, f"u{n}"), str(LABELS[i]), f"u{n}")
    result = project.retrain()
    assert result.curation["rows"] == 6 + 6  # bulk is capped at 25% of its 26 rows
    assert result.curation["capped"] == {project.pseudonym("bulk"): 14}
    assert result.train is not None
    checks = result.train.decision.checks
    assert checks["contribution"]["top_user"] in {
        project.pseudonym(u) for u in ["bulk", *(f"u{n}" for n in range(6))]
    }
    assert checks["contribution"]["new_user_share"] == 1.0  # every user is new this cycle
    assert checks["contribution"]["first_feedback"] is True
    assert checks["contribution"]["passed"] is True  # nothing to compare with yet
    # A second cycle from a burst of fresh ids is flagged (reported, not refused by default).
    for n, i in enumerate(range(530, 542)):
        answer(client, ask(client, i, f"fresh{n}"), str(LABELS[i]), f"fresh{n}")
    second = project.retrain()
    assert second.train is not None
    burst = second.train.decision.checks["contribution"]
    # bulk's capped answers come round again (capped again); the twelve fresh ids dominate.
    assert burst["new_user_share"] == round(12 / burst["rows"], 4) > 0.5
    assert (burst["first_feedback"], burst["passed"], burst["refuse"]) == (False, False, False)
    assert "of the new rows come from first-time users" in second.train.decision.reason
    assert checks["contribution"]["refuse"] is False  # reported, not refused, by default


def test_the_queue_never_asks_about_a_known_input(
    client: TestClient, project: Project, reviewer: dict[str, str]
) -> None:
    known = [ask(client, i) for i in range(0, 5)]  # digits 0-4 are training examples
    answered_before = ask(client, 700, "alice")
    answer(client, answered_before, "1", "alice")
    again = ask(client, 700)  # the same image, asked again by someone else
    fresh = [ask(client, i) for i in range(710, 715)]
    ids = {
        i["prediction_id"]
        for i in client.get("/v1/review-queue", params={"limit": 50}, headers=reviewer).json()[
            "items"
        ]
    }
    assert not ids & set(known)
    assert again not in ids
    assert set(fresh) <= ids


def test_golden_probes_are_not_counted_as_calls(
    client: TestClient, project: Project, reviewer: dict[str, str]
) -> None:
    for i in range(600, 610):
        ask(client, i)
    client.get("/v1/review-queue", params={"limit": 10}, headers=reviewer)  # a golden probe
    stats = client.get("/v1/stats", headers=reviewer).json()
    assert stats["calls"]["total"] == 10
    with project.db.session() as s:
        from flywheel.store.schema import Prediction

        assert len(s.scalars(select(Prediction)).all()) == 11


def test_an_empty_queue_holds_no_golden_probe(
    client: TestClient, project: Project, reviewer: dict[str, str]
) -> None:
    r = client.get("/v1/review-queue", params={"limit": 10}, headers=reviewer)
    assert r.status_code == 200
    assert r.json()["items"] == []
    with project.db.session() as s:
        assert s.scalars(select(ReviewItem)).all() == []


def _naive_cycle(c: TestClient, liar: bool) -> None:
    """h1 and h2 agree on 20 images; then 30 images of 3s are each answered by one of them
    and, last (a naive tie goes to the latest answer), by a liar who calls every 3 an 8."""
    for i in range(400, 420):
        for user in ("h1", "h2"):
            answer(c, ask(c, i, user), str(LABELS[i]), user)
    threes = [i for i in range(420, len(LABELS)) if LABELS[i] == 3][:30]
    for n, i in enumerate(threes):
        user = "h1" if n % 2 else "h2"
        answer(c, ask(c, i, user), "3", user)
        if liar:
            answer(c, ask(c, i, "liar"), "8", "liar")


@pytest.mark.parametrize("liar", [False, True])
def test_naive_curation_is_checked_against_a_trust_curated_reference(
    tmp_path: Path, liar: bool
) -> None:
    settings = {"curation": "naive", "epochs": 12, "label_issue_mode": "keep"}
    project = make_project(tmp_path / "p", n_holdout=100, settings=settings)
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        _naive_cycle(c, liar)
    result = project.retrain()
    assert result.feedback_used == 50
    assert result.train is not None
    decision = result.train.decision
    check = decision.checks["trusted_reference"]
    assert check["refuse"] is True
    # The reference re-curates every answer as trust curation would: the liar's answers
    # are held back (quarantined), the per-user cap applies.
    assert check["held_back_answers"] == (30 if liar else 0)
    assert 150 < check["reference_rows"] <= 150 + 50
    with project.db.session() as s:
        feedback_8s = s.scalar(
            select(func.count()).where(Example.origin == "feedback", Example.label == "8")
        )
    assert (feedback_8s or 0) >= (30 if liar else 0)  # naive curation took the liar's word
    assert 0.0 <= check["reference_accuracy"] <= 1.0
    assert check["passed"] is (decision.reason.find("possibly poisoned") < 0)
    if not check["passed"]:
        assert result.train.promoted is False
    project.close()


def test_trust_curation_needs_no_reference(project: Project, client: TestClient) -> None:
    _naive_cycle(client, True)
    result = project.retrain()
    assert result.train is not None
    assert "trusted_reference" not in result.train.decision.checks


def _truth(project: Project, indices: range) -> dict[str, str]:
    """Input hash → true label for digits ``indices`` (and the project's own rows)."""
    out = {project.blobs.put(digit_png(i)): str(LABELS[i]) for i in indices}
    with project.db.session() as s:
        out |= {h: str(lab) for h, lab in s.execute(select(Example.input_hash, Example.label))}
    return out


def _work_the_queue(
    client: TestClient, project: Project, user: str, key: dict[str, str], *, liar: bool
) -> tuple[int, int | None]:
    """``user`` answers queue items (sent with their X-User-Id), always wrongly or always
    rightly, ten at a time, trust re-estimated after each batch, up to 60 answers.
    Returns (answers given, the count at which the user was quarantined, or None)."""
    truth = _truth(project, range(300, 420))
    given = 0
    while given < 60:
        r = client.post("/v1/review-queue?limit=10", headers={"X-User-Id": user, **key})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert items, "the queue ran dry"
        with project.db.session() as s:
            digest = {
                p.id: p.input_hash
                for p in s.scalars(
                    select(Prediction).where(Prediction.id.in_([i["prediction_id"] for i in items]))
                )
            }
        for item in items:
            right = truth[digest[item["prediction_id"]]]
            said = str((int(right) + 1) % 10) if liar else right
            answer(client, item["prediction_id"], said, user, key)
            given += 1
        project.update_trust()
        me = next(u for u in project.users() if u["user_id"] == project.pseudonym(user))
        if me["quarantined"]:
            return given, given
    return given, None


def test_a_lone_liar_is_quarantined_within_ten_answers_though_nobody_overlaps(
    client: TestClient, project: Project, reviewer: dict[str, str]
) -> None:
    # Traffic nobody answered: each of the liar's items is answered by the liar alone.
    for i in range(300, 420):
        ask(client, i, "someone")
    given, quarantined_at = _work_the_queue(client, project, "liar", reviewer, liar=True)
    assert quarantined_at is not None and quarantined_at <= 10
    trust = next(u for u in project.users() if u["user_id"] == project.pseudonym("liar"))
    detail = trust["trust_detail"]
    assert detail["golden_seen"] >= project.settings.golden_early
    assert detail["golden_correct"] == 0 and trust["trust"] < project.settings.quarantine_below
    # An honest user working the same queue is never quarantined, and once their
    # probes are answered they are trusted enough to judge models.
    given, quarantined_at = _work_the_queue(client, project, "honest", reviewer, liar=False)
    assert quarantined_at is None and given == 60
    honest = next(u for u in project.users() if u["user_id"] == project.pseudonym("honest"))
    assert honest["trust"] >= project.settings.eval_min_trust


def test_a_known_users_queue_asks_again_about_what_another_answered_alone(
    tmp_path: Path,
) -> None:
    project = make_project(tmp_path / "proj", settings={"golden_early": 0})
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        key, _ = project.create_key(["feedback"])
        auth = {"Authorization": f"Bearer {key}"}
        for i in range(300, 320):  # ann answers her own predictions; nobody overlaps
            answer(c, ask(c, i, "ann"), str(LABELS[i]), "ann")
        for i in range(320, 360):
            ask(c, i, "someone")
        r = c.post("/v1/review-queue?limit=10", headers={"X-User-Id": "bob", **auth})
        items = r.json()["items"]
        ann_inputs = {project.blobs.put(digit_png(i)) for i in range(300, 320)}
        with project.db.session() as s:
            handed = {
                p.id: p
                for p in s.scalars(
                    select(Prediction).where(Prediction.id.in_([i["prediction_id"] for i in items]))
                )
            }
        again = [p for p in handed.values() if p.input_hash in ann_inputs]
        # limit 10: one golden probe's room, then 20% of the other nine → two asked again.
        assert len(again) == 2
        assert all(p.user_id == project.pseudonym("bob") for p in again)
        truth = _truth(project, range(300, 320))
        for p in again:
            answer(c, p.id, truth[p.input_hash], "bob", auth)
        trust = project.update_trust()
        assert trust[project.pseudonym("ann")]["compared_with_others"] == 2
        assert trust[project.pseudonym("ann")]["agreed_with_others"] == 2
        # Without a named user the queue is as before: nothing asked again.
        r = c.post("/v1/review-queue?limit=10", headers=auth)
        pids = [i["prediction_id"] for i in r.json()["items"]]
        with project.db.session() as s:
            again_anon = s.scalars(
                select(Prediction.input_hash).where(Prediction.id.in_(pids))
            ).all()
        assert not set(again_anon) & ann_inputs
    project.close()
