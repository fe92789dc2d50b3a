"""The per-user privacy ledger across retrains, forget and the ledger over HTTP, retention."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from flywheel import Project
from flywheel.serving import create_app
from flywheel.store.schema import Example, ModelVersion, Prediction, utcnow
from tests.factories import digit_png, digits_arrays, make_project

pytest.importorskip("opacus")
LABELS = digits_arrays()[1]


def _answer(project: Project, user: str, indices: range) -> None:
    for i in indices:
        p = project.predict(digit_png(i), user_id=user)
        project.record_feedback(p.prediction_id, label=str(LABELS[i]), user_id=user)


@pytest.fixture(scope="function")
def private(tmp_path: Path) -> Iterator[Project]:
    p = make_project(
        tmp_path / "dp",
        settings={"dp_user_budget": 5.0, "max_user_share": 1.0, "gate_margin": 1.0},
    )
    yield p
    p.close()


def test_the_ledger_charges_every_user_and_refuses_one_over_budget(private: Project) -> None:
    config = dataclasses.replace(private.train_config(), dp_epsilon=3.0, batch_size=16)
    _answer(private, "a", range(300, 310))
    _answer(private, "b", range(310, 320))
    first = private.retrain(config)
    assert first.train is not None
    priv = first.train.model.metrics["privacy"]
    assert priv["users_charged"] == 2 and priv["users_left_out"] == 0
    assert priv["epsilon"] == pytest.approx(3.0, abs=0.05) and priv["accountant"] == "rdp"
    assert priv["cold_start"] == "production was trained without DP"
    if not first.train.promoted:  # (three epochs of DP: whatever the gate said, serve it)
        private.promote(first.train.model.version)
    ledger = {r["user_id"]: r for r in private.privacy_ledger()}
    a, b, c = (private.pseudonym(u) for u in "abc")
    assert set(ledger) == {a, b}
    assert ledger[a]["epsilon"] == pytest.approx(priv["epsilon"])
    assert ledger[a]["remaining"] == pytest.approx(5.0 - priv["epsilon"])
    with private.db.session() as s:  # recorded with the version, as the issue asks
        mv = s.get(ModelVersion, first.train.model.version)
        assert mv is not None and mv.training_config["dp_epsilon"] == 3.0
        for k in ("noise_multiplier", "max_grad_norm", "sample_rate", "delta"):
            assert k in mv.metrics["privacy"]

    # A second private run would take a and b to 6 > 5: their rows are left out.
    _answer(private, "c", range(320, 330))
    second = private.retrain(config)
    assert second.train is not None
    p2 = second.train.model.metrics["privacy"]
    assert p2["users_left_out"] == 2 and p2["rows_left_out"] == 20
    assert set(p2["left_out"]) == {a, b} and p2["users_charged"] == 1
    assert second.train.model.metrics["n_train"] == first.train.model.metrics["n_train"] - 10
    after = {r["user_id"]: r for r in private.privacy_ledger()}
    assert after[a]["epsilon"] == ledger[a]["epsilon"]  # not charged: not used
    assert [r["model_version"] for r in after[c]["runs"]] == [second.train.model.version]
    # The second private run starts from the first (private) one.
    assert "cold_start" not in p2

    # Over HTTP (admin): the user's ledger, raw id or pseudonym.
    key, _ = private.create_key(["admin"])
    with TestClient(create_app(private.settings, private), base_url="http://127.0.0.1") as client:
        h = {"Authorization": f"Bearer {key}"}
        r = client.get("/v1/users/a/privacy", headers=h)
        assert r.status_code == 200 and r.json()["epsilon"] == pytest.approx(priv["epsilon"])
        assert client.get(f"/v1/users/{a}/privacy", headers=h).json()["user_id"] == a
        assert client.get("/v1/users/a/privacy").status_code == 401
        assert client.get("/v1/users/zed/privacy", headers=h).status_code == 404
        assert len(client.get("/v1/privacy/ledger", headers=h).json()) == 3


def test_forget_over_http_answers_once_erased_and_retrains_as_a_job(tmp_path: Path) -> None:
    project = make_project(tmp_path / "f", settings={"max_user_share": 1.0})
    _answer(project, "theo", range(300, 320))
    r = project.retrain()
    assert r.train is not None
    project.promote(r.train.model.version)
    key, _ = project.create_key(["admin"])
    h = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as client:
        assert client.delete("/v1/users/theo").status_code == 401
        resp = client.delete("/v1/users/theo", headers=h)
        assert resp.status_code == 200
        body = resp.json()
        assert body["erased"]["feedback"] == 20 and body["needs_retrain"] is True
        assert body["versions_affected"] == [r.train.model.version]
        # Erased and out of service before the answer: production fell back to v1.
        assert body["production_after"] == 1
        assert client.post(
            "/v1/predict", files={"file": ("d.png", digit_png(5), "image/png")}
        ).json()["model_version"] in (1,)
        job = body["retrain_job"]
        runner = client.app.state.runner  # type: ignore[attr-defined]
        runner.futures[job].result(timeout=120)
        done = client.get(f"/v1/jobs/{job}", headers=h).json()
        assert done["status"] == "succeeded"
        assert done["result"]["retrain"]["version"] == r.train.model.version + 1
        assert client.delete("/v1/users/theo", headers=h).status_code == 404
    project.close()


def test_retention_deletes_old_inputs_but_not_training_rows(project: Project) -> None:
    old = project.predict(digit_png(400), user_id="u")
    used = project.predict(digit_png(401), user_id="u")
    project.record_feedback(used.prediction_id, label=str(LABELS[401]), user_id="u")
    project.retrain()  # the answered input becomes a training row
    fresh = project.predict(digit_png(402))
    with project.db.session() as s:
        s.execute(
            update(Prediction)
            .where(Prediction.id.in_([old.prediction_id, used.prediction_id]))
            .values(created_at=utcnow() - timedelta(days=40))
        )
        hashes = dict(s.execute(select(Prediction.id, Prediction.input_hash)).all())
        training = set(s.scalars(select(Example.input_hash)))
    done = project.apply_retention(30)
    assert done["predictions"] == 2 and done["inputs_deleted"] == 1
    assert not project.blobs.exists(hashes[old.prediction_id])
    assert project.blobs.exists(hashes[fresh.prediction_id])
    if hashes[used.prediction_id] in training:
        assert project.blobs.exists(hashes[used.prediction_id])
        assert done["kept_for_training"] == 1
    # The review queue no longer offers what cannot be shown.
    offered = {i["prediction_id"] for i in project.review_queue(limit=50)}
    assert old.prediction_id not in offered
    assert project.audit_log("retention")[0]["detail"]["inputs_deleted"] == 1
