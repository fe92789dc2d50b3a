"""The HTTP API: status first, then fields, then the exact error detail."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from flywheel import Project, Settings
from flywheel.serving import create_app
from flywheel.store.schema import Feedback, Prediction
from tests.factories import digit_png, make_project

LABELS = [str(d) for d in range(10)]


@pytest.fixture(scope="function")
def client(project: Project) -> Iterator[TestClient]:
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="function")
def admin(project: Project) -> dict[str, str]:
    key, _ = project.create_key(["admin"], name="test-admin")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="function")
def reader(project: Project) -> dict[str, str]:
    """A key of the narrowest scope: enough for the aggregates (models, stats, metrics)."""
    key, _ = project.create_key(["predict"], name="test-reader")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="function")
def reviewer(project: Project) -> dict[str, str]:
    key, _ = project.create_key(["feedback"], name="test-reviewer")
    return {"Authorization": f"Bearer {key}"}


def predict(client: TestClient, data: bytes | None = None, **headers: str) -> dict:
    r = client.post(
        "/v1/predict",
        files={"file": ("x.png", data or digit_png(0), "image/png")},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return r.json()


def count(project: Project, model: type) -> int:
    with project.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


# -- predict ----------------------------------------------------------------------------


def test_predict_returns_label_probabilities_and_logs_the_call(
    client: TestClient, project: Project
) -> None:
    r = client.post(
        "/v1/predict",
        files={"file": ("d.png", digit_png(3), "image/png")},
        headers={"X-User-Id": "alice"},
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"prediction_id", "label", "probabilities", "model_version"}
    assert body["model_version"] == 1
    assert sorted(body["probabilities"], key=int) == LABELS
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    # The call is logged by the server's background writer: wait for its commit.
    assert project.prediction_log is not None
    assert project.prediction_log.wait_written(body["prediction_id"])
    with project.db.session() as s:
        row = s.get(Prediction, body["prediction_id"])
        assert row is not None
        assert (row.user_id, row.model_version, row.label) == (
            project.pseudonym("alice"),
            1,
            body["label"],
        )
        assert row.latency_ms > 0
        assert project.blobs.get(row.input_hash) == digit_png(3)


def test_predict_rejects_a_file_that_is_not_an_image(client: TestClient, project: Project) -> None:
    # PNG's signature, then garbage: the declared type fits, the image does not read.
    broken = b"\x89PNG\r\n\x1a\n" + b"not an image"
    r = client.post("/v1/predict", files={"file": ("x.png", broken, "image/png")})
    assert r.status_code == 422
    assert r.json()["detail"] == "the PNG has a chunk of impossible length at byte 8"
    # ...and with metadata left in, the decoder says so itself.
    settings = Settings.load(project.settings.project_dir, strip_image_metadata=False)
    with TestClient(create_app(settings, Project(settings)), base_url="http://127.0.0.1") as raw:
        r = raw.post("/v1/predict", files={"file": ("x.png", broken, "image/png")})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("the file is not a readable image")
    # Bytes that are not what they are declared to be: 415, before any decoding.
    r = client.post("/v1/predict", files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 415
    assert r.json()["detail"] == "the file's bytes are not image/png"
    gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
    r = client.post("/v1/predict", content=gif, headers={"Content-Type": "image/png"})
    assert r.status_code == 415
    r = client.post("/v1/predict", content=gif, headers={"Content-Type": "image/gif"})
    assert r.status_code == 415
    assert (
        "takes files of type application/octet-stream, image/jpeg, image/png" in r.json()["detail"]
    )
    assert count(project, Prediction) == 0


def test_predict_rejects_an_empty_file(client: TestClient) -> None:
    r = client.post("/v1/predict", files={"file": ("x.png", b"", "image/png")})
    assert r.status_code == 422
    assert r.json()["detail"] == "the image is empty (0 bytes)"


def test_predict_without_a_file_names_the_missing_field(client: TestClient) -> None:
    r = client.post("/v1/predict")
    assert r.status_code == 422
    assert r.json()["detail"].startswith("the request holds no file: send it as a multipart")
    r = client.post("/v1/predict", files={"other": ("x.png", digit_png(0), "image/png")})
    assert r.status_code == 422
    assert r.json()["detail"] == "the multipart body has no file field named 'file'"
    r = client.post("/v1/predict", content=b"", headers={"Content-Type": "image/png"})
    assert r.status_code == 422
    assert r.json()["detail"] == "the image is empty (0 bytes)"


def test_predict_takes_the_raw_image_as_the_body(client: TestClient, project: Project) -> None:
    raw = client.post("/v1/predict", content=digit_png(7), headers={"Content-Type": "image/png"})
    multipart = client.post("/v1/predict", files={"file": ("d.png", digit_png(7), "image/png")})
    assert raw.status_code == multipart.status_code == 200
    assert raw.json()["probabilities"] == multipart.json()["probabilities"]
    schema = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]
    assert {"multipart/form-data", "image/png", "application/octet-stream"} <= set(
        schema["requestBody"]["content"]
    )


def test_predict_rejects_a_bad_user_id(client: TestClient) -> None:
    r = client.post(
        "/v1/predict",
        files={"file": ("x.png", digit_png(0), "image/png")},
        headers={"X-User-Id": "bad id with spaces"},
    )
    assert r.status_code == 422
    assert r.json()["detail"].startswith("user id must be 1-128 characters")


def test_body_over_the_limit_is_413_and_logs_nothing(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", settings={"max_body_bytes": 2048})
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/predict", files={"file": ("x.png", b"\0" * 4096, "image/png")})
        assert r.status_code == 413
        assert r.json() == {"detail": "request body is larger than the limit of 2048 bytes"}
        assert predict(c)["model_version"] == 1  # a small one still passes
    assert count(project, Prediction) == 1
    project.close()


def test_streamed_body_over_the_limit_is_413(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", settings={"max_body_bytes": 1024})

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"x" * 512

    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/feedback", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"] == "request body is larger than the limit of 1024 bytes"
    project.close()


def test_predict_before_any_model_is_503(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", train=False)
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/predict", files={"file": ("x.png", digit_png(0), "image/png")})
    assert r.status_code == 503
    assert r.json()["detail"] == "no production model yet; train one with `flywheel train`"
    project.close()


# -- feedback ---------------------------------------------------------------------------


def test_feedback_with_a_label_is_committed_before_201(
    client: TestClient, project: Project
) -> None:
    pid = predict(client, **{"X-User-Id": "bob"})["prediction_id"]
    r = client.post(
        "/v1/feedback", json={"prediction_id": pid, "label": "7"}, headers={"X-User-Id": "bob"}
    )
    assert r.status_code == 201
    fid = r.json()["feedback_id"]
    # A fresh connection sees the row: it was committed before the answer.
    fresh = Project(project.settings)
    with fresh.db.session() as s:
        row = s.get(Feedback, fid)
        assert row is not None
        assert (row.prediction_id, row.label, row.user_id) == (pid, "7", project.pseudonym("bob"))
    fresh.close()


def test_feedback_correct_true_and_false(client: TestClient, project: Project) -> None:
    p = predict(client)
    for correct in (True, False):
        r = client.post(
            "/v1/feedback", json={"prediction_id": p["prediction_id"], "correct": correct}
        )
        assert r.status_code == 201
    with project.db.session() as s:
        rows = s.scalars(select(Feedback).order_by(Feedback.created_at)).all()
        assert [(f.label, f.correct) for f in rows] == [(None, True), (None, False)]


def test_feedback_for_an_unknown_prediction_is_404(client: TestClient, project: Project) -> None:
    r = client.post("/v1/feedback", json={"prediction_id": "nope", "label": "1"})
    assert r.status_code == 404
    assert r.json()["detail"] == "prediction 'nope' not found"
    assert count(project, Feedback) == 0


def test_feedback_with_a_label_outside_the_model_is_422(
    client: TestClient, project: Project
) -> None:
    pid = predict(client)["prediction_id"]
    r = client.post("/v1/feedback", json={"prediction_id": pid, "label": "cat"})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "label 'cat' is not one of model v1's labels: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    )
    assert count(project, Feedback) == 0


def test_feedback_contradicting_itself_is_422(client: TestClient) -> None:
    p = predict(client)
    other = next(lab for lab in LABELS if lab != p["label"])
    r = client.post(
        "/v1/feedback", json={"prediction_id": p["prediction_id"], "label": other, "correct": True}
    )
    assert r.status_code == 422
    assert r.json()["detail"] == (
        f"'correct': true contradicts label {other!r}: the prediction was {p['label']!r}"
    )


def test_feedback_malformed_json_is_422(client: TestClient) -> None:
    r = client.post(
        "/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_jpeg_where_json_was_due_is_422_naming_it(client: TestClient, ctype: str) -> None:
    """The bytes are not UTF-8: echoed as they came, the error itself was a 500."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), 128).save(buf, format="JPEG")
    r = client.post("/v1/feedback", content=buf.getvalue(), headers={"content-type": ctype})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["input"] == f"<{len(buf.getvalue())} bytes, not UTF-8 text>"


def test_feedback_without_an_answer_is_422(client: TestClient) -> None:
    r = client.post("/v1/feedback", json={"prediction_id": "x"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == (
        "Value error, give 'label' (the true label), 'value' (the true value, regression) "
        "or 'correct' (true or false)"
    )


def test_feedback_with_an_unknown_field_is_422(client: TestClient) -> None:
    r = client.post("/v1/feedback", json={"prediction_id": "x", "label": "1", "lable": "2"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "lable"]


# -- models, promote, rollback ----------------------------------------------------------


def test_models_lists_versions_with_lineage(client: TestClient, reader: dict[str, str]) -> None:
    r = client.get("/v1/models", headers=reader)
    assert r.status_code == 200
    (v1,) = r.json()
    assert v1["version"] == 1
    assert v1["aliases"] == ["candidate", "production"]
    assert v1["parent"] is None
    assert v1["dataset_version"] == 1
    assert 0 <= v1["metrics"]["accuracy"] <= 1
    assert v1["training_config"]["epochs"] == 3
    assert v1["gate"]["promoted"] is True


def test_admin_routes_need_an_admin_key(client: TestClient, project: Project) -> None:
    r = client.post("/v1/rollback")
    assert r.status_code == 401
    assert r.json()["detail"] == (
        "/v1/rollback needs an API key with the 'admin' scope: send 'Authorization: Bearer <key>'"
    )
    key, _ = project.create_key(["predict", "feedback"])
    r = client.post("/v1/rollback", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403
    assert r.json()["detail"] == "this key lacks the 'admin' scope (it has: feedback, predict)"
    r = client.post("/v1/rollback", headers={"Authorization": "Bearer fw_nothing_here"})
    assert r.status_code == 401
    assert r.json()["detail"] == "unknown API key"


def test_promote_unknown_version_is_404(client: TestClient, admin: dict[str, str]) -> None:
    r = client.post("/v1/models/99/promote", headers=admin)
    assert r.status_code == 404
    assert r.json()["detail"] == "model version 99 not found"


def test_promote_with_a_non_integer_version_is_422(
    client: TestClient, admin: dict[str, str]
) -> None:
    r = client.post("/v1/models/latest/promote", headers=admin)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "version"]


def test_rollback_with_nothing_earlier_is_409(client: TestClient, admin: dict[str, str]) -> None:
    r = client.post("/v1/rollback", headers=admin)
    assert r.status_code == 409
    assert r.json()["detail"] == "production v1 has no earlier version to roll back to"


def test_promote_and_rollback_swap_the_served_model(
    client: TestClient, project: Project, admin: dict[str, str]
) -> None:
    project.train(project.train_config(seed=1))  # v2, promoted or not by the gate
    r = client.post("/v1/models/2/promote", headers=admin)
    assert r.status_code == 200
    assert r.json()["aliases"] == ["candidate", "production"]
    assert predict(client)["model_version"] == 2
    r = client.post("/v1/rollback", headers=admin)
    assert r.status_code == 200
    assert r.json() == {"from_version": 2, "to_version": 1}
    assert predict(client)["model_version"] == 1


# -- retrain, jobs, stats ---------------------------------------------------------------


def test_retrain_job_uses_feedback_and_reports_the_gate(
    client: TestClient, project: Project, admin: dict[str, str]
) -> None:
    for i in range(300, 340):
        pid = predict(client, digit_png(i), **{"X-User-Id": f"u{i % 4}"})["prediction_id"]
        from flywheel.data import digits_arrays

        label = str(digits_arrays()[1][i])
        r = client.post(
            "/v1/feedback",
            json={"prediction_id": pid, "label": label},
            headers={"X-User-Id": f"u{i % 4}"},
        )
        assert r.status_code == 201, r.text
    r = client.post("/v1/retrain", headers=admin, json={})
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    client.app.state.runner.futures[job_id].result(timeout=300)  # type: ignore[attr-defined]
    r = client.get(f"/v1/jobs/{job_id}", headers=admin)
    assert r.status_code == 200
    job = r.json()
    assert job["status"] == "succeeded", job["error"]
    res = job["result"]
    assert res["feedback_used"] == 40
    assert res["dataset_version"] == 2
    assert res["model_version"] == 2
    assert res["champion_version"] == 1
    assert isinstance(res["promoted"], bool)
    assert "McNemar p=" in res["reason"]
    # The job's log has one line per epoch the search ran, then one per refit epoch,
    # and the run's stages between them.
    metrics = project.version_info(2).metrics
    epochs, best = metrics["epochs_run"], metrics["best_epoch"]
    steps = [line for line in job["log"] if line.startswith(("epoch ", "refit "))]
    assert len(steps) == epochs + best and steps[0].startswith("epoch 1/")
    assert all(line.startswith(f"refit {i + 1}/{best} ") for i, line in enumerate(steps[epochs:]))
    stages = [line for line in job["log"] if line not in steps]
    assert stages[0].startswith("curating the new answers")
    assert stages[1] == "reading the dataset version" and stages[2].startswith("decoding ")
    assert stages[3:5] == [
        "the gate: scoring challenger and champion on the same rows",
        "ONNX export and parity check",
    ]
    assert stages[-1].startswith("registering the model")
    assert job["log"].index(stages[2]) < job["log"].index(steps[0])  # decoded, then fit
    versions = {m["version"]: m for m in client.get("/v1/models", headers=admin).json()}
    assert versions[2]["parent"] == 1
    assert versions[2]["dataset_version"] == 2


def test_retrain_with_no_feedback_is_skipped(client: TestClient, admin: dict[str, str]) -> None:
    job_id = client.post("/v1/retrain", headers=admin).json()["job_id"]
    client.app.state.runner.futures[job_id].result(timeout=300)  # type: ignore[attr-defined]
    job = client.get(f"/v1/jobs/{job_id}", headers=admin).json()
    assert job["status"] == "succeeded"
    assert job["result"]["skipped"] is True
    assert job["result"]["reason"] == "no new feedback with a usable label since the last retrain"


def test_unknown_job_is_404(client: TestClient, admin: dict[str, str]) -> None:
    r = client.get("/v1/jobs/abc", headers=admin)
    assert r.status_code == 404
    assert r.json()["detail"] == "job 'abc' not found"


def test_stats_counts_calls_and_feedback(client: TestClient, reader: dict[str, str]) -> None:
    preds = [predict(client, digit_png(i)) for i in range(5)]
    client.post(
        "/v1/feedback",
        json={"prediction_id": preds[0]["prediction_id"], "label": preds[0]["label"]},
    )
    client.post("/v1/feedback", json={"prediction_id": preds[1]["prediction_id"], "correct": False})
    r = client.get("/v1/stats", headers=reader)
    assert r.status_code == 200
    s = r.json()
    assert s["calls"]["total"] == 5
    assert s["calls"]["per_version"] == {"1": 5}
    assert sum(s["calls"]["per_label"].values()) == 5
    assert sum(s["calls"]["per_minute"].values()) == 5
    assert s["feedback"] == {"total": 2, "agreed": 1, "disagreed": 1}
    (v1,) = s["versions"]
    assert v1["calls"] == 5
    assert v1["live_accuracy"] == 0.5


def test_healthz_and_openapi(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "production_version": 1, "serving_version": 1}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/predict",
        "/v1/feedback",
        "/v1/models",
        "/v1/models/{version}/promote",
        "/v1/rollback",
        "/v1/retrain",
        "/v1/jobs/{job_id}",
        "/v1/stats",
        "/healthz",
    ):
        assert path in paths


@pytest.mark.parametrize("task", ["image", "regression"])
def test_every_operation_documents_the_schema_of_its_answer(
    tmp_path: Path, task: str, project: Project
) -> None:
    if task == "regression":
        from flywheel.data import DiabetesSource

        project = Project.init(
            tmp_path / "r", DiabetesSource(), task="regression", settings={"epochs": 1}
        )
    spec = create_app(project.settings, project).openapi()
    missing = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            ok = [r for code, r in op["responses"].items() if code.startswith("2")]
            schemas = [m.get("schema") for r in ok for m in (r.get("content") or {}).values()]
            if not ok or not all(schemas):
                missing.append(f"{method.upper()} {path}")
            # A typed answer, not a free-form object.
            elif any(sc.get("additionalProperties") is True for sc in schemas):
                missing.append(f"{method.upper()} {path} (untyped)")
    assert missing == []
    assert sum(len(ops) for ops in spec["paths"].values()) >= 20  # it looked at them all


def test_the_review_queue_is_handed_out_by_post_and_get_is_deprecated(
    client: TestClient, reviewer: dict[str, str]
) -> None:
    for i in range(400, 420):
        predict(client, digit_png(i))
    posted = client.post("/v1/review-queue", params={"limit": 5}, headers=reviewer)
    assert posted.status_code == 200
    body = posted.json()
    assert body["strategy"] == "margin" and len(body["items"]) == 5
    item = body["items"][0]
    assert set(item) == {"prediction_id", "score", "strategy", "top", "reason"}
    assert all(len(t) == 2 for t in item["top"])
    # The same answer for clients written before (items handed out are not asked again).
    got = client.get("/v1/review-queue", params={"limit": 5}, headers=reviewer)
    assert got.status_code == 200 and len(got.json()["items"]) == 5
    ops = client.get("/openapi.json").json()["paths"]["/v1/review-queue"]
    assert ops["get"]["deprecated"] is True and not ops["post"].get("deprecated")


# -- binding beyond loopback --------------------------------------------------------------


def test_beyond_loopback_every_route_needs_a_key(project: Project) -> None:
    settings = Settings.load(project.settings.project_dir, host="0.0.0.0")
    key, _ = project.create_key(["predict"])
    with TestClient(create_app(settings, Project(settings)), base_url="http://127.0.0.1") as c:
        files = {"file": ("x.png", digit_png(0), "image/png")}
        r = c.post("/v1/predict", files=files)
        assert r.status_code == 401
        r = c.get("/v1/models")
        assert r.status_code == 401
        r = c.post("/v1/predict", files=files, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        pid = r.json()["prediction_id"]
        r = c.post(
            "/v1/feedback",
            json={"prediction_id": pid, "label": "1"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 403
        assert r.json()["detail"] == "this key lacks the 'feedback' scope (it has: predict)"
        r = c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200


def test_server_refuses_to_start_beyond_loopback_without_a_key(project: Project) -> None:
    from flywheel.errors import ConfigError
    from flywheel.serving import check_can_serve

    other = Project(Settings.load(project.settings.project_dir, host="0.0.0.0"))
    with pytest.raises(ConfigError, match=r"refusing to serve on 0\.0\.0\.0"):
        check_can_serve(other)
    project.create_key(["admin"])
    check_can_serve(other)
    other.close()


def test_closed_predict_on_loopback_needs_a_key(project: Project) -> None:
    settings = Settings.load(project.settings.project_dir, open_predict=False)
    with TestClient(create_app(settings, Project(settings)), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/predict", files={"file": ("x.png", digit_png(0), "image/png")})
    assert r.status_code == 401


def test_metrics_count_requests_predictions_and_feedback(
    client: TestClient, reader: dict[str, str]
) -> None:
    p = predict(client)
    predict(client)
    client.post("/v1/feedback", json={"prediction_id": p["prediction_id"], "label": p["label"]})
    client.post("/v1/feedback", json={"prediction_id": "missing", "label": "1"})
    r = client.get("/metrics", headers=reader)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = set(r.text.splitlines())
    assert (
        'flywheel_http_requests_total{method="POST",route="/v1/predict",status="200"} 2.0' in lines
    )
    assert (
        'flywheel_http_requests_total{method="POST",route="/v1/feedback",status="404"} 1.0' in lines
    )
    assert f'flywheel_predictions_total{{label="{p["label"]}",model_version="1"}} ' in "\n".join(
        lines
    )
    assert 'flywheel_feedback_total{agreed="true"} 1.0' in lines
    assert 'flywheel_prediction_seconds_count{model_version="1"} 2.0' in lines
    assert "flywheel_production_version 1.0" in lines
    # Routes are counted by template, so ids do not blow up the label set.
    client.get("/v1/jobs/abc")
    client.get("/v1/jobs/def")
    text = client.get("/metrics", headers=reader).text
    assert 'route="/v1/jobs/{job_id}"' in text
    assert "abc" not in text


def test_admins_make_list_and_revoke_keys_over_http(
    client: TestClient, project: Project, admin: dict[str, str]
) -> None:
    r = client.post("/v1/keys", headers=admin, json={"scopes": ["predict"], "name": "mobile"})
    assert r.status_code == 201
    made = r.json()
    assert made["key"].startswith(f"fw_{made['prefix']}_") and made["expires_at"] is None
    shipped = {"Authorization": f"Bearer {made['key']}"}
    assert client.get("/v1/models", headers=shipped).status_code == 200
    # Only admins: a predict key can neither list nor make nor revoke keys.
    assert client.get("/v1/keys", headers=shipped).status_code == 403
    assert client.delete(f"/v1/keys/{made['prefix']}", headers=shipped).status_code == 403
    listed = client.get("/v1/keys", headers=admin).json()
    assert {k["name"]: k["status"] for k in listed} == {"test-admin": "live", "mobile": "live"}
    assert made["key"] not in json.dumps(listed)
    r = client.delete(f"/v1/keys/{made['id']}", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    r = client.get("/v1/models", headers=shipped)
    assert r.status_code == 401 and r.json()["detail"] == "this API key was revoked"
    assert client.delete("/v1/keys/nobody", headers=admin).status_code == 404
    r = client.post("/v1/keys", headers=admin, json={"scopes": ["root"]})
    assert r.status_code == 422
    r = client.post("/v1/keys", headers=admin, json={"scopes": ["admin"], "expires_days": 0})
    assert r.status_code == 422
    r = client.post("/v1/keys", headers=admin, json={"scopes": ["admin"], "expires_days": 1.5})
    assert r.status_code == 201 and r.json()["expires_at"] is not None
