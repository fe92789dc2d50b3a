"""Every input a clear 4xx, nothing written, and no stored value that breaks a reader."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from flywheel import Project
from flywheel.data import DiabetesSource
from flywheel.serving import create_app
from flywheel.store.schema import Feedback, Prediction
from tests.factories import digit_png


@pytest.fixture(scope="function")
def client(project: Project) -> Iterator[TestClient]:
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="function")
def admin(project: Project) -> dict[str, str]:
    key, _ = project.create_key(["admin"])
    return {"Authorization": f"Bearer {key}"}


def _rows(project: Project, table: Any) -> int:
    with project.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def _pid(client: TestClient) -> str:
    r = client.post("/v1/predict", files={"file": ("d.png", digit_png(1), "image/png")})
    return str(r.json()["prediction_id"])


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_anywhere_in_a_body_is_a_422_in_valid_json(
    client: TestClient, admin: dict[str, str], number: str
) -> None:
    pid = _pid(client)
    bodies = [
        ("/v1/feedback", f'{{"prediction_id": "{pid}", "value": {number}}}', {}),
        ("/v1/feedback", f'{{"prediction_id": "{pid}", "label": "1", "x": {number}}}', {}),
        ("/v1/retrain", f'{{"epochs": {number}}}', admin),
        ("/v1/explain", f'{{"prediction_id": "{pid}", "target": {number}}}', admin),
    ]
    for path, body, headers in bodies:
        r = client.post(path, content=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 422, (path, body, r.text)
        assert isinstance(r.json()["detail"], list)  # it parses: valid JSON


def test_out_of_range_ids_control_characters_and_lax_types_are_refused(
    client: TestClient, admin: dict[str, str], project: Project
) -> None:
    pid = _pid(client)
    assert client.post(f"/v1/models/{2**63}/promote", headers=admin).status_code == 422
    assert client.post("/v1/models/0/promote", headers=admin).status_code == 422
    assert client.get("/v1/jobs/a%00b", headers=admin).status_code == 422
    assert client.delete("/v1/users/a%00b", headers=admin).status_code == 422
    for body in (
        {"prediction_id": "a\x00b", "label": "1"},
        {"prediction_id": pid, "label": "1\x00"},
        {"prediction_id": pid, "correct": 1},  # 1 is not a boolean
        {"prediction_id": pid, "correct": "true"},
    ):
        assert client.post("/v1/feedback", json=body).status_code == 422, body
    assert client.post("/v1/retrain", json={"seed": False}, headers=admin).status_code == 422
    r = client.get(f"/v1/explain/{pid}.png", params={"target": "a\x00"}, headers=admin)
    assert r.status_code == 422
    assert _rows(project, Feedback) == 0


def test_a_malformed_multipart_body_is_a_422(client: TestClient) -> None:
    for body, ctype in (
        (b"garbage", "multipart/form-data"),  # no boundary
        (b"--xx\r\nContent-Disposition: form-data\r\n\r\nabc", "multipart/form-data; boundary=xx"),
    ):
        r = client.post("/v1/predict", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 422, r.text
        assert "multipart" in r.json()["detail"]


@pytest.fixture(scope="function")
def regression(tmp_path: Path) -> Iterator[Project]:
    project = Project.init(
        tmp_path / "r", DiabetesSource(), task="regression", settings={"epochs": 2}
    )
    project.train()
    yield project
    project.close()


def test_regression_values_out_of_range_are_refused_and_old_ones_break_nothing(
    regression: Project,
) -> None:
    row = {"age": 0.0, "sex": 0.0, "bmi": 0.0, "bp": 0.0}
    row |= {f"s{i}": 0.0 for i in range(1, 7)}
    with TestClient(create_app(regression.settings, regression), base_url="http://127.0.0.1") as c:
        # Features far beyond the data overflow the model: no NaN answer, nothing logged.
        huge = c.post("/v1/predict", json={"features": {**row, "bmi": 1e308}})
        assert huge.status_code == 422
        assert (
            huge.json()["detail"] == "features ['bmi'] are out of range for the model (too large)"
        )
        assert _rows(regression, Prediction) == 0
        pid = c.post("/v1/predict", json={"features": row}).json()["prediction_id"]
        r = c.post("/v1/feedback", json={"prediction_id": pid, "value": 1e308})
        assert r.status_code == 422 and "out of range" in r.json()["detail"]
        ok = c.post("/v1/feedback", json={"prediction_id": pid, "value": 150.0})
        assert ok.status_code == 201
        # A value stored before values were checked: the statistics still answer.
        with regression.db.session() as s:
            s.add(Feedback(id="old", prediction_id=pid, value=1e308, correct=None))
        key, _ = regression.create_key(["predict"])
        stats = c.get("/v1/stats", headers={"Authorization": f"Bearer {key}"})
        assert stats.status_code == 200
        (v1,) = stats.json()["versions"]
        assert v1["live_mse"] is not None and v1["live_mse"] < 1e6  # the 1e308 left out
    dataset, summary = regression.curate()
    assert summary["out_of_range"] == 1  # not trained on
    assert dataset is not None and dataset.n_feedback == 1


def test_a_retrain_asked_for_while_one_waits_joins_it(
    project: Project, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    real = project.retrain

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(project, "retrain", slow)
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        first = c.post("/v1/retrain", json={}, headers=admin).json()["job_id"]
        assert started.wait(30)  # the first runs; what comes next waits behind it
        waiting = c.post("/v1/retrain", json={}, headers=admin).json()["job_id"]
        again = c.post("/v1/retrain", json={}, headers=admin).json()["job_id"]
        assert again == waiting != first
        other = c.post("/v1/retrain", json={"epochs": 2}, headers=admin)
        assert other.status_code == 409 and waiting in other.json()["detail"]
        release.set()
    jobs = {j["job_id"] for j in project.jobs()}
    assert jobs == {first, waiting}  # two jobs, however many asked
