"""Label Studio's ML backend (/label-studio): the requests Label Studio 1.23.2 really
sends (trimmed copies of those captured by tools/label_studio_run.py), answered as its
protocol says; annotations become, change and withdraw feedback; Start Training queues
a gated retrain; media come from Label Studio alone."""

from __future__ import annotations

import base64
import copy
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient

from flywheel import Project, Settings
from flywheel.data import DiabetesSource
from flywheel.serving import create_app
from flywheel.serving.label_studio import queue_score
from tests.factories import digit_png, make_project

DIGITS = "".join(f'<Choice value="{d}"/>' for d in range(10))
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="digit" toName="image" choice="single" showInLine="true">'
    f"{DIGITS}</Choices></View>"
)
NUMBER_CONFIG = (
    '<View><Table name="features" value="$features"/>'
    '<Number name="target" toName="features" required="true"/></View>'
)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def basic(key: str, user: str = "label-studio") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- what Label Studio 1.23.2 sends (captured, trimmed) -----------------------------------

#: POST /setup (its access_token is the project owner's: flywheel neither needs nor keeps it)
SETUP = {
    "project": "1.1796301193",
    "schema": CONFIG,
    "hostname": "http://localhost:8080",
    "access_token": "abcdef0123456789",
    "extra_params": None,
}


def predict_request(*tasks: dict[str, Any], config: str = CONFIG) -> dict[str, Any]:
    """POST /predict: its tasks as TaskSimpleSerializer writes them."""
    full = [
        {
            "meta": {},
            "created_at": "2026-12-03T12:33:13.947376Z",
            "is_labeled": False,
            "overlap": 1,
            "inner_id": t["id"],
            "total_annotations": 0,
            "total_predictions": 0,
            "project": 1,
            "file_upload": None,
            "annotations": [],
            "predictions": [],
            **t,
        }
        for t in tasks
    ]
    return {
        "tasks": full,
        "project": "1.1796301193",
        "label_config": config,
        "params": {"login": None, "password": None, "context": None},
    }


def ls_project(config: str = CONFIG) -> dict[str, Any]:
    """The ``project`` every webhook payload carries (ProjectWebhookSerializer)."""
    return {
        "id": 1,
        "task_number": 2,
        "title": "digits",
        "label_config": config,
        "parsed_label_config": {
            "digit": {
                "type": "Choices",
                "to_name": ["image"],
                "inputs": [{"type": "Image", "valueType": None, "value": "image"}],
                "labels": [str(d) for d in range(10)],
            }
        },
        "model_version": "flywheel-v1",
        "min_annotations_to_start_training": 0,
        "created_by": 1,
        "organization": 1,
    }


def annotation_event(
    action: str,
    aid: int,
    label: str | None,
    *,
    task: dict[str, Any],
    result_id: str | None = None,
    parent_prediction: int | None = None,
    user: int = 1,
    cancelled: bool = False,
) -> dict[str, Any]:
    """ANNOTATION_CREATED / ANNOTATION_UPDATED (AnnotationWebhookSerializer + the task)."""
    item: dict[str, Any] = {
        "from_name": "digit",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [] if label is None else [label]},
    }
    if result_id is not None:
        item = {"id": result_id, **item}
    return {
        "action": action,
        "annotation": {
            "id": aid,
            "result": [item],
            "was_cancelled": cancelled,
            "ground_truth": False,
            "created_at": "2026-12-03T12:33:14.542891Z",
            "updated_at": "2026-12-03T12:33:14.542910Z",
            "draft_created_at": None,
            "lead_time": 2.5,
            "prediction": {},
            "result_count": 1,
            "unique_id": "1a6a80c4-99e6-495f-8d2d-c88828ed54c8",
            "import_id": None,
            "last_action": None,
            "bulk_created": False,
            "task": task["id"],
            "project": 1,
            "completed_by": user,
            "updated_by": user,
            "parent_prediction": parent_prediction,
            "parent_annotation": None,
            "last_created_by": None,
        },
        "project": ls_project(),
        "task": {"meta": {}, "is_labeled": True, "overlap": 1, "project": 1, **task},
    }


def deleted_event(*ids: int) -> dict[str, Any]:
    return {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in ids],
            "project": ls_project()}  # fmt: skip


#: POST /webhook from the ML backend's own connection (Basic), when Start Training is pressed
START_TRAINING = {"action": "START_TRAINING", "project": ls_project()}


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = make_project(tmp_path_factory.mktemp("ls") / "digits")
    yield p
    p.close()


@pytest.fixture(scope="module")
def keys(digits: Project) -> dict[str, str]:
    return {s: digits.create_key([s], name=f"ls-{s}")[0] for s in ("predict", "feedback", "admin")}


@pytest.fixture(scope="function")
def client(digits: Project) -> Iterator[TestClient]:
    with TestClient(create_app(digits.settings, digits), base_url="http://127.0.0.1") as c:
        yield c


def feedback_counts(project: Project) -> dict[str, int]:
    counts: dict[str, int] = project.stats()["feedback"]
    return counts


def answers_of(project: Project, ls_user: int) -> int:
    pseudonym = project.pseudonym(f"label-studio:{ls_user}")
    return sum(u["answers"] for u in project.users() if u["user_id"] == pseudonym)


# -- the connection ------------------------------------------------------------------------


def test_health_and_setup_answer_label_studios_connection(
    client: TestClient, keys: dict[str, str]
) -> None:
    for method in ("GET", "POST"):
        r = client.request(method, "/label-studio/health", headers=basic(keys["predict"]))
        assert r.status_code == 200
        assert r.json() == {
            "status": "UP",
            "model_class": "flywheel (image-classification)",
            "model_version": "flywheel-v1",
        }
    r = client.post("/label-studio/setup", json=SETUP, headers=basic(keys["predict"]))
    assert r.status_code == 200
    assert r.json() == {"model_version": "flywheel-v1"}
    r = client.get("/label-studio/versions", headers=basic(keys["predict"]))
    assert r.status_code == 200 and r.json() == {"versions": ["flywheel-v1"]}


def test_setup_refuses_a_config_the_model_cannot_answer(
    client: TestClient, keys: dict[str, str]
) -> None:
    def setup(schema: str) -> Any:
        return client.post(
            "/label-studio/setup", json={**SETUP, "schema": schema}, headers=basic(keys["predict"])
        )

    r = setup(CONFIG.replace('<Choice value="7"/>', ""))
    assert r.status_code == 422
    assert r.json()["detail"].startswith(
        "the labelling config's <Choices name='digit'> lacks the model's labels ['7']"
    )
    r = setup('<View><Text name="t" value="$text"/><Choices name="c" toName="t"/></View>')
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "the labelling config has no <Choices> tag whose toName is <Image> with a $data key: "
        "a image-classification model answers one such tag"
    )
    bomb = '<!DOCTYPE lol [<!ENTITY a "aaaa">]><View>&a;</View>'
    r = setup(bomb)
    assert r.status_code == 422
    assert r.json()["detail"] == "the labelling config may not declare a DOCTYPE or entities"
    assert setup("<View><Image").status_code == 422
    r = client.post("/label-studio/setup", content=b"{not json", headers=basic(keys["predict"]))
    assert r.status_code == 422


# -- auth ------------------------------------------------------------------------------------


def test_basic_and_bearer_keys_are_taken_and_checked(
    client: TestClient, keys: dict[str, str]
) -> None:
    url = "/label-studio/health"
    assert client.get(url, headers=basic(keys["predict"], user="anyone")).status_code == 200
    assert client.get(url, headers=bearer(keys["predict"])).status_code == 200
    assert client.get(url, headers=basic(keys["admin"])).status_code == 200  # admin: every scope
    for wrong in (basic("fw_wrong"), bearer("fw_wrong"), {"Authorization": "Basic !!"}):
        r = client.get(url, headers=wrong)
        assert r.status_code == 401, wrong
    r = client.get(url)
    assert r.status_code == 401
    assert r.json()["detail"].startswith("/label-studio/health needs an API key")
    r = client.get(url, headers=basic(keys["feedback"]))
    assert r.status_code == 403
    assert "predict" in r.json()["detail"]
    # Annotations need the feedback scope; a predict key (the ML backend's) is refused.
    r = client.post("/label-studio/webhook", json=deleted_event(1), headers=basic(keys["predict"]))
    assert r.status_code == 403
    # Basic is Label Studio's alone: the rest of the API takes a bearer key only.
    r = client.get("/v1/models", headers=basic(keys["admin"]))
    assert r.status_code == 401
    assert r.json()["detail"] == "send the key as 'Authorization: Bearer <key>'"


def test_label_studios_own_webhook_without_a_header_is_refused(
    client: TestClient, digits: Project
) -> None:
    """The webhook Label Studio creates for an ML backend sends no Authorization."""
    before = feedback_counts(digits)["total"]
    task = {"id": 1, "data": {"image": data_uri(digit_png(5))}}
    r = client.post(
        "/label-studio/webhook", json=annotation_event("ANNOTATION_CREATED", 1, "5", task=task)
    )
    assert r.status_code == 401
    assert feedback_counts(digits)["total"] == before


# -- predictions -----------------------------------------------------------------------------


def test_predict_logs_a_prediction_per_task_and_returns_its_id_and_queue_score(
    client: TestClient, digits: Project, keys: dict[str, str]
) -> None:
    tasks: list[dict[str, Any]] = [
        {"id": 10 + i, "data": {"image": data_uri(digit_png(400 + i))}} for i in range(3)
    ]
    r = client.post(
        "/label-studio/predict", json=predict_request(*tasks), headers=basic(keys["predict"])
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 3
    for task, pred in zip(tasks, results, strict=True):
        (item,) = pred["result"]
        assert set(item) == {"id", "from_name", "to_name", "type", "value"}
        assert (item["from_name"], item["to_name"], item["type"]) == ("digit", "image", "choices")
        (label,) = item["value"]["choices"]
        assert label in [str(d) for d in range(10)]
        assert pred["model_version"] == "flywheel-v1"
        # The result's id is the logged prediction: its input is the task's image.
        assert digits.stored_input(item["id"]) == base64.b64decode(task["data"]["image"][22:])
        # The score: 1 - the margin (the review queue's priority, lower asked sooner).
        assert 0.0 <= pred["score"] <= 1.0
    r = client.post(
        "/label-studio/predict", json=predict_request(), headers=bearer(keys["predict"])
    )
    assert r.status_code == 200 and r.json() == {"results": []}


def test_predict_refuses_bad_tasks_with_a_clear_4xx(
    client: TestClient, digits: Project, keys: dict[str, str]
) -> None:
    def predict(*tasks: dict[str, Any]) -> Any:
        return client.post(
            "/label-studio/predict", json=predict_request(*tasks), headers=basic(keys["predict"])
        )

    calls = digits.stats()["calls"]["total"]
    good = {"id": 6, "data": {"image": data_uri(digit_png(0))}}
    r = predict(good, {"id": 7, "data": {"picture": data_uri(digit_png(0))}})
    assert r.status_code == 422
    assert digits.stats()["calls"]["total"] == calls  # one bad task: none predicted
    assert r.json()["detail"] == (
        "task 7's data has no 'image', which the Image tag 'image' shows (value=\"$image\")"
    )
    r = predict({"id": 8, "data": {"image": "/data/upload/1/d.png"}})
    assert r.status_code == 422
    assert r.json()["detail"].startswith(
        "task media '/data/upload/1/d.png' is a URL: set label_studio_url"
    )
    r = predict({"id": 9, "data": {"image": "data:image/png;base64,%%%"}})
    assert r.status_code == 422
    assert r.json()["detail"] == "task 9's data: URI is not valid base64"
    gif = "data:image/gif;base64," + base64.b64encode(b"GIF89a\x01\x00").decode()
    assert predict({"id": 10, "data": {"image": gif}}).status_code == 415
    r = client.post(
        "/label-studio/predict",
        json={"tasks": "all of them", "label_config": CONFIG},
        headers=basic(keys["predict"]),
    )
    assert r.status_code == 422


def test_the_score_is_the_review_queues_priority_in_label_studios_order() -> None:
    """Lower is asked sooner (Label Studio's Uncertainty sampling serves the lowest
    first): 1 - the strategy's priority; entropy over ln K."""
    probs = {"a": 0.6, "b": 0.3, "c": 0.1}
    pid = "05804e1a-3219-434a-8ff8-aca4a38987a4"
    assert queue_score(probs, "margin", 0, pid) == pytest.approx(0.3)  # 1 - (1 - (p1 - p2))
    assert queue_score(probs, "least_confidence", 0, pid) == pytest.approx(0.6)
    entropy = -sum(p * math.log(p) for p in probs.values()) / math.log(3)
    assert queue_score(probs, "entropy", 0, pid) == pytest.approx(1 - entropy, abs=1e-6)
    unsure = queue_score({"a": 0.5, "b": 0.5, "c": 0.0}, "margin", 0, pid)
    assert unsure == pytest.approx(0.0)  # a tie: asked first
    assert queue_score(None, "margin", 0, pid) is None  # a regression value has none
    other = "15804e1a-3219-434a-8ff8-aca4a38987a4"
    assert queue_score(probs, "random", 0, pid) != queue_score(probs, "random", 0, other)


# -- annotations become feedback --------------------------------------------------------------


def _predict_one(client: TestClient, key: str, task: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/label-studio/predict", json=predict_request(task), headers=basic(key))
    assert r.status_code == 200, r.text
    item: dict[str, Any] = r.json()["results"][0]["result"][0]
    return item


def test_annotations_become_change_and_withdraw_feedback(
    client: TestClient, digits: Project, keys: dict[str, str]
) -> None:
    hook = bearer(keys["feedback"])
    task = {"id": 21, "data": {"image": data_uri(digit_png(421))}}
    item = _predict_one(client, keys["predict"], task)
    predicted = item["value"]["choices"][0]
    other = str((int(predicted) + 1) % 10)
    before = feedback_counts(digits)
    # Created from the pre-annotation: its result carries the prediction's id.
    event = annotation_event(
        "ANNOTATION_CREATED", 101, predicted, task=task, result_id=item["id"], user=7
    )
    r = client.post("/label-studio/webhook", json=event, headers=hook)
    assert r.status_code == 200, r.text
    (done,) = r.json()["annotations"]
    assert done["stored"] is True and done["prediction_id"] == item["id"]
    assert done["external_id"] == "label-studio:1:101"
    after = feedback_counts(digits)
    assert (after["total"], after["agreed"]) == (before["total"] + 1, before["agreed"] + 1)
    assert answers_of(digits, 7) == 1
    # Sent again as it is: stored once.
    r = client.post("/label-studio/webhook", json=event, headers=hook)
    assert r.status_code == 200 and r.json()["annotations"][0]["replayed"] is True
    assert feedback_counts(digits)["total"] == after["total"]
    # Updated to another label: the same row, now disagreeing.
    event = annotation_event(
        "ANNOTATION_UPDATED", 101, other, task=task, result_id=item["id"], user=7
    )
    r = client.post("/label-studio/webhook", json=event, headers=hook)
    assert r.status_code == 200
    assert r.json()["annotations"][0]["changed"] is True
    changed = feedback_counts(digits)
    assert changed["total"] == after["total"]
    assert changed["disagreed"] == after["disagreed"] + 1
    # A created event sent again after the change, with its first label: the answer
    # follows the newest event (Label Studio sends each once; a retry is not refused).
    event = annotation_event(
        "ANNOTATION_CREATED", 101, predicted, task=task, result_id=item["id"], user=7
    )
    r = client.post("/label-studio/webhook", json=event, headers=hook)
    assert r.status_code == 200 and r.json()["annotations"][0]["changed"] is True
    assert feedback_counts(digits) == after
    # Deleted: withdrawn.
    r = client.post("/label-studio/webhook", json=deleted_event(101, 999), headers=hook)
    assert r.status_code == 200
    assert r.json() == {"action": "ANNOTATIONS_DELETED", "withdrawn": 1, "unknown": 1,
                        "dataset_version": None}  # fmt: skip
    assert feedback_counts(digits) == before
    assert answers_of(digits, 7) == 0


def test_an_annotation_names_its_prediction_by_parent_or_is_predicted_then(
    client: TestClient, digits: Project, keys: dict[str, str]
) -> None:
    """No result id (Label Studio's editor made its own) and no Label Studio to ask about
    the parent prediction: the task's image is predicted then, and answered."""
    task = {"id": 22, "data": {"image": data_uri(digit_png(422))}}
    calls = digits.stats()["calls"]["total"]
    event = annotation_event("ANNOTATION_CREATED", 102, "4", task=task, parent_prediction=5)
    r = client.post("/label-studio/webhook", json=event, headers=bearer(keys["feedback"]))
    assert r.status_code == 200, r.text
    (done,) = r.json()["annotations"]
    assert digits.stored_input(done["prediction_id"]) == digit_png(422)
    assert digits.stats()["calls"]["total"] == calls + 1
    # A skipped task, or one left without a label, is no answer: nothing stored.
    total = feedback_counts(digits)["total"]
    for kw in ({"label": None}, {"label": "4", "cancelled": True}):
        event = annotation_event("ANNOTATION_CREATED", 103, task=task, **kw)
        r = client.post("/label-studio/webhook", json=event, headers=bearer(keys["feedback"]))
        assert r.status_code == 200
        assert r.json()["annotations"][0]["stored"] is False
    assert feedback_counts(digits)["total"] == total
    # ...and an update that takes the label away withdraws the answer.
    event = annotation_event("ANNOTATION_UPDATED", 102, None, task=task)
    r = client.post("/label-studio/webhook", json=event, headers=bearer(keys["feedback"]))
    assert r.status_code == 200 and r.json()["annotations"][0]["withdrawn"] is True
    assert feedback_counts(digits)["total"] == total - 1


def test_bad_events_get_a_clear_4xx_and_store_nothing(
    client: TestClient, digits: Project, keys: dict[str, str]
) -> None:
    hook = bearer(keys["feedback"])
    total = feedback_counts(digits)["total"]
    task = {"id": 23, "data": {"image": data_uri(digit_png(423))}}
    r = client.post(
        "/label-studio/webhook",
        json=annotation_event("ANNOTATION_CREATED", 104, "cat", task=task),
        headers=hook,
    )
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "annotation 104's label 'cat' is not one of the model's labels: "
        "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    )
    r = client.post("/label-studio/webhook", json={"action": "SOMETHING_NEW"}, headers=hook)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("unknown Label Studio event 'SOMETHING_NEW'")
    r = client.post(
        "/label-studio/webhook", json={"action": "TASKS_CREATED", "tasks": []}, headers=hook
    )
    assert r.status_code == 200 and r.json() == {"action": "TASKS_CREATED", "ignored": True}
    r = client.post("/label-studio/webhook", content=b"[1,", headers=hook)
    assert r.status_code == 422
    r = client.post("/label-studio/webhook", json={"no": "action"}, headers=hook)
    assert r.status_code == 422
    no_data = annotation_event("ANNOTATION_CREATED", 105, "3", task={"id": 24, "data": {}})
    r = client.post("/label-studio/webhook", json=no_data, headers=hook)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("task 24's data has no 'image'")
    two = annotation_event("ANNOTATION_CREATED", 106, "3", task=task)
    two["annotation"]["result"][0]["value"]["choices"] = ["3", "4"]
    r = client.post("/label-studio/webhook", json=two, headers=hook)
    assert r.status_code == 422 and "gives 2 labels" in r.json()["detail"]
    assert feedback_counts(digits)["total"] == total


def test_a_withdrawn_answer_already_curated_is_not_trained_on_again(
    tmp_path: Path,
) -> None:
    project = make_project(tmp_path / "p")
    key, _ = project.create_key(["admin"], name="ls")
    hook = bearer(key)
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        task = {"id": 31, "data": {"image": data_uri(digit_png(431))}}
        item = _predict_one(c, key, task)
        event = annotation_event("ANNOTATION_CREATED", 201, "3", task=task, result_id=item["id"])
        assert c.post("/label-studio/webhook", json=event, headers=hook).status_code == 200
        curated, _ = project.curate()
        assert curated is not None and curated.stats["n_feedback"] == 1
        # Changed after curation: left out of a new version, curated again with its new label.
        event = annotation_event("ANNOTATION_UPDATED", 201, "8", task=task, result_id=item["id"])
        r = c.post("/label-studio/webhook", json=event, headers=hook)
        assert r.status_code == 200
        left_out = r.json()["annotations"][0]["dataset_version"]
        assert left_out == curated.version + 1
        revised = project.dataset()
        assert revised.stats["revision"] == {"answers": 1, "rows_left_out": 1, "why": "changed"}
        assert revised.n_feedback == 0
        assert revised.n_train + revised.n_evaluation == curated.n_train + curated.n_evaluation - 1
        again, _ = project.curate()
        assert again is not None and again.stats["class_counts"]["8"] == (
            curated.stats["class_counts"].get("8", 0) + 1
        )
        # Deleted after curation: left out again, and gone.
        r = c.post("/label-studio/webhook", json=deleted_event(201), headers=hook)
        assert r.status_code == 200
        assert r.json()["dataset_version"] == again.version + 1
        assert project.dataset().stats["n_feedback"] == 0
        assert project.curate()[0] is None  # nothing left to learn from
        assert feedback_counts(project)["total"] == 0
    project.close()


def test_bulk_annotations_from_predictions_are_stored_in_order(
    client: TestClient, digits: Project, keys: dict[str, str]
) -> None:
    """ANNOTATIONS_CREATED: the Data Manager's "Create annotations from predictions"
    (lists of annotations and of their tasks); an update of one never stored stores it."""
    tasks = [{"id": 60 + i, "data": {"image": data_uri(digit_png(460 + i))}} for i in range(2)]
    items = [_predict_one(client, keys["predict"], t) for t in tasks]
    events = [
        annotation_event(
            "ANNOTATION_CREATED", 600 + i, it["value"]["choices"][0], task=t, result_id=it["id"]
        )
        for i, (t, it) in enumerate(zip(tasks, items, strict=True))
    ]
    bulk: dict[str, Any] = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [e["annotation"] for e in events],
        "task": [e["task"] for e in events],
        "project": ls_project(),
    }
    before = feedback_counts(digits)
    r = client.post("/label-studio/webhook", json=bulk, headers=bearer(keys["feedback"]))
    assert r.status_code == 200, r.text
    done = r.json()["annotations"]
    assert [d["prediction_id"] for d in done] == [it["id"] for it in items]
    assert feedback_counts(digits)["agreed"] == before["agreed"] + 2
    bulk["task"] = bulk["task"][:1]
    r = client.post("/label-studio/webhook", json=bulk, headers=bearer(keys["feedback"]))
    assert r.status_code == 422
    # An update of an annotation flywheel never stored (its webhook had no key then).
    task = {"id": 62, "data": {"image": data_uri(digit_png(462))}}
    event = annotation_event("ANNOTATION_UPDATED", 602, "2", task=task)
    r = client.post("/label-studio/webhook", json=event, headers=bearer(keys["feedback"]))
    assert r.status_code == 200 and r.json()["annotations"][0]["stored"] is True
    assert feedback_counts(digits)["total"] == before["total"] + 3


def test_failed_basic_authentications_are_throttled(digits: Project, keys: dict[str, str]) -> None:
    st = Settings.load(digits.settings.project_dir, auth_failures_per_minute=3)
    served = Project(st)
    with TestClient(create_app(st, served), base_url="http://127.0.0.1") as c:
        for i in range(3):
            r = c.get("/label-studio/health", headers=basic(f"fw_guess_{i}"))
            assert r.status_code == 401
        r = c.get("/label-studio/health", headers=basic(keys["predict"]))
        assert r.status_code == 429 and "Retry-After" in r.headers
    served.close()


# -- Start Training -------------------------------------------------------------------------


def test_start_training_queues_a_gated_retrain(
    client: TestClient, digits: Project, keys: dict[str, str]
) -> None:
    r = client.post("/label-studio/webhook", json=START_TRAINING, headers=basic(keys["feedback"]))
    assert r.status_code == 403
    assert r.json()["detail"].startswith("START_TRAINING starts a retrain: it needs an admin key")
    r = client.post("/label-studio/webhook", json=START_TRAINING, headers=basic(keys["admin"]))
    assert r.status_code == 200
    body = r.json()
    assert body["action"] == "START_TRAINING" and body["job"] == body["job_id"]
    client.app.state.runner.futures[body["job_id"]].result(timeout=300)  # type: ignore[attr-defined]
    job = digits.job(body["job_id"])
    assert (job["kind"], job["trigger"], job["status"]) == ("retrain", "label-studio", "succeeded")
    assert "skipped" in job["result"]
    # Label Studio's older path, POST /train, does the same.
    r = client.post(
        "/label-studio/train",
        json={"annotations": [], "project": "1.1"},
        headers=basic(keys["admin"]),
    )
    assert r.status_code == 200 and r.json()["status"] == "queued"
    client.app.state.runner.futures[r.json()["job_id"]].result(timeout=300)  # type: ignore[attr-defined]


# -- media from Label Studio, and nowhere else ----------------------------------------------


class _FakeLabelStudio(BaseHTTPRequestHandler):
    """Label Studio's file server: /data/upload/... with its token; a redirect away."""

    token = "Token tok-123456"
    other = ""  # another server's base URL
    prediction_id = ""  # the flywheel prediction its prediction 7 carries

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.token:
            self._send(401, b"{}")
        elif self.path == "/data/upload/1/d.png":
            self._send(200, digit_png(433), "image/png")
        elif self.path == "/data/upload/1/away.png":
            self.send_response(302)
            self.send_header("Location", f"{self.other}/d.png")
            self.end_headers()
        elif self.path == "/data/upload/1/big.png":
            self._send(200, b"\x89PNG\r\n\x1a\n" + b"0" * 5000, "image/png")
        elif self.path == "/api/predictions/7":
            item = {"id": self.prediction_id, "from_name": "digit", "type": "choices"}
            self._send(200, json.dumps({"id": 7, "result": [item], "task": 41}).encode())
        else:
            self._send(404, b"{}")

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Elsewhere(_FakeLabelStudio):
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self._send(200, digit_png(0), "image/png")


@pytest.fixture(scope="function")
def label_studio() -> Iterator[tuple[str, str]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (_FakeLabelStudio, _Elsewhere)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    urls = tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    _FakeLabelStudio.other = urls[1].replace("127.0.0.1", "localhost")
    _Elsewhere.asked = []
    yield urls[0], urls[1]
    for s in servers:
        s.shutdown()
        s.server_close()


def test_media_are_fetched_from_label_studio_alone(
    digits: Project, keys: dict[str, str], label_studio: tuple[str, str]
) -> None:
    ls, elsewhere = label_studio
    settings = Settings.load(
        digits.settings.project_dir,
        label_studio_url=ls + "/",
        label_studio_token="tok-123456",
        max_body_bytes=4000,
    )
    served = Project(settings)
    with TestClient(create_app(settings, served), base_url="http://127.0.0.1") as c:

        def predict(image: str) -> Any:
            body = predict_request({"id": 41, "data": {"image": image}})
            return c.post("/label-studio/predict", json=body, headers=basic(keys["predict"]))

        r = predict("/data/upload/1/d.png")
        assert r.status_code == 200, r.text
        pid = r.json()["results"][0]["result"][0]["id"]
        assert served.stored_input(pid) == digit_png(433)
        assert predict(ls + "/data/upload/1/d.png").status_code == 200  # absolute, on it
        # Another host: refused without asking it.
        r = predict(elsewhere + "/d.png")
        assert r.status_code == 422
        assert r.json()["detail"] == (
            f"task media '{elsewhere}/d.png' is not on Label Studio ({ls}): flywheel fetches "
            "media from label_studio_url alone"
        )
        # A redirect off Label Studio: refused before it is followed.
        r = predict("/data/upload/1/away.png")
        assert r.status_code == 422
        assert "is not on Label Studio" in r.json()["detail"]
        assert _Elsewhere.asked == []
        # Over the size limit, missing, or refused by Label Studio: said so.
        r = predict("/data/upload/1/big.png")
        assert r.status_code == 422 and "is over 4000 bytes (max_body_bytes)" in r.json()["detail"]
        r = predict("/data/upload/1/none.png")
        assert r.status_code == 422
        assert (
            r.json()["detail"] == "Label Studio answered 404 for " + ls + "/data/upload/1/none.png"
        )
        # An annotation naming its prediction only as its parent: Label Studio is asked.
        _FakeLabelStudio.prediction_id = pid
        calls = served.stats()["calls"]["total"]
        task = {"id": 41, "data": {"image": "/data/upload/1/d.png"}}
        event = annotation_event("ANNOTATION_CREATED", 701, "3", task=task, parent_prediction=7)
        r = c.post("/label-studio/webhook", json=event, headers=bearer(keys["feedback"]))
        assert r.status_code == 200, r.text
        assert r.json()["annotations"][0]["prediction_id"] == pid
        # ...or by the copy of the prediction shown that Label Studio puts in it.
        other = predict("/data/upload/1/d.png").json()["results"][0]["result"][0]["id"]
        event = annotation_event("ANNOTATION_CREATED", 702, "3", task=task, parent_prediction=8)
        event["annotation"]["prediction"] = {"id": 8, "result": [{"id": other}], "task": 41}
        r = c.post("/label-studio/webhook", json=event, headers=bearer(keys["feedback"]))
        assert r.status_code == 200 and r.json()["annotations"][0]["prediction_id"] == other
        assert served.stats()["calls"]["total"] == calls + 1  # no prediction made for either
    served.close()
    # A token Label Studio refuses: said so.
    settings = Settings.load(
        digits.settings.project_dir, label_studio_url=ls, label_studio_token="not-the-token"
    )
    served = Project(settings)
    with TestClient(create_app(settings, served), base_url="http://127.0.0.1") as c:
        body = predict_request({"id": 42, "data": {"image": "/data/upload/1/d.png"}})
        r = c.post("/label-studio/predict", json=body, headers=basic(keys["predict"]))
        assert r.status_code == 422
        assert r.json()["detail"].endswith(": is label_studio_token right?")
    served.close()
    with pytest.raises(ValueError, match="label_studio_token is set but label_studio_url is not"):
        Settings(project_dir=digits.settings.project_dir, label_studio_token="tok-123456")
    with pytest.raises(ValueError, match="label_studio_url: 'ftp://x' is not an http"):
        Settings(project_dir=digits.settings.project_dir, label_studio_url="ftp://x")


# -- a regression project -------------------------------------------------------------------


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = Project.init(
        tmp_path_factory.mktemp("ls") / "diabetes", DiabetesSource(), task="regression",
        settings={"epochs": 2},
    )  # fmt: skip
    p.train()
    yield p
    p.close()


def test_a_regression_project_predicts_numbers_and_takes_annotated_values(
    diabetes: Project,
) -> None:
    key, _ = diabetes.create_key(["admin"], name="ls")
    columns = diabetes.dataset().preprocessing["columns"]
    features = {c: 0.01 * (i + 1) for i, c in enumerate(columns)}
    with TestClient(create_app(diabetes.settings, diabetes), base_url="http://127.0.0.1") as c:
        tasks = [{"id": 51, "data": {"features": features}}, {"id": 52, "data": dict(features)}]
        body = predict_request(*tasks, config=NUMBER_CONFIG)
        r = c.post("/label-studio/predict", json=body, headers=basic(key))
        assert r.status_code == 200, r.text
        first, second = r.json()["results"]
        item = first["result"][0]
        assert (item["from_name"], item["to_name"], item["type"]) == (
            "target",
            "features",
            "number",
        )
        assert isinstance(item["value"]["number"], float) and first["score"] is None
        # Features nested under the object's key, or at the top of the data: the same row.
        assert item["value"]["number"] == pytest.approx(second["result"][0]["value"]["number"])
        bad = predict_request({"id": 53, "data": {"age": 1.0}}, config=NUMBER_CONFIG)
        r = c.post("/label-studio/predict", json=bad, headers=basic(key))
        assert r.status_code == 422 and r.json()["detail"].startswith("task 53's data lacks")
        event = copy.deepcopy(annotation_event("ANNOTATION_CREATED", 301, None, task=tasks[0]))
        event["project"]["label_config"] = NUMBER_CONFIG
        event["annotation"]["result"] = [
            {"id": item["id"], "from_name": "target", "to_name": "features", "type": "number",
             "value": {"number": 151.0}}
        ]  # fmt: skip
        r = c.post("/label-studio/webhook", json=event, headers=bearer(key))
        assert r.status_code == 200, r.text
        assert r.json()["annotations"][0]["prediction_id"] == item["id"]
        assert diabetes.stats()["feedback"]["total"] == 1
        event["annotation"]["result"][0]["value"]["number"] = 1e9
        event["action"] = "ANNOTATION_UPDATED"
        r = c.post("/label-studio/webhook", json=event, headers=bearer(key))
        assert r.status_code == 422 and "out of range" in r.json()["detail"]
