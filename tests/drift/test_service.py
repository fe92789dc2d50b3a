"""Monitoring windows on a real digits project: a stream without a shift, then inputs
that got worse (a dimmer, noisier camera); each window's tests, alarm, webhook, the
label-free estimate beside the accuracy its answers showed; the drift trigger; the
CLI, the API and the metrics."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from flywheel import Project
from flywheel.cli import app as cli
from flywheel.data import digits_arrays, encode_png
from flywheel.drift.stats import scaled_confidence
from flywheel.serving.app import create_app
from flywheel.serving.jobs import JobRunner
from flywheel.store.schema import WebhookDelivery
from tests.factories import make_project, sign_in

WINDOW = 100
#: the images the project does not hold, in an order of their own (the digits are stored
#: by writer: windows of consecutive images would differ by who wrote them)
OUTSIDE = (1000 + np.random.default_rng(5).permutation(797)).tolist()


def _dim(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = image.astype(np.float64) * 0.6 + rng.normal(0, 2, image.shape)
    return np.clip(noisy, 0, 16).astype(image.dtype)


@dataclass
class Stream:
    project: Project
    clean: list[tuple[str, str, str]]  # (prediction id, predicted, true label)
    dim: list[tuple[str, str, str]]
    first: dict[str, Any]
    again: dict[str, Any]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stream]:
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["drift.alarm"], "secret": "s" * 32}
    root = tmp_path_factory.mktemp("drift") / "p"
    policy = {"retrain_on_drift": True, "drift_min_feedback": 60, "retrain_cooldown_s": 0}
    make_project(root, n_train=600, n_holdout=400, settings={"drift_window": WINDOW, **policy})
    project = Project.open(root, webhooks=[hook], webhook_allow_private=True)
    images, labels = digits_arrays()
    rng = np.random.default_rng(0)
    clean, dim = [], []
    for i in OUTSIDE[:300]:
        r = project.predict(encode_png(images[i]))
        clean.append((r.prediction_id, str(r.label), str(labels[i])))
    # Answers to half of the first window's calls, by one user, all true labels.
    for pid, _, truth in clean[:50]:
        project.record_feedback(pid, label=truth, user_id="ann")
    first = project.monitoring(update=True)
    for i in OUTSIDE[300:500]:
        r = project.predict(encode_png(_dim(images[i], rng)))
        dim.append((r.prediction_id, str(r.label), str(labels[i])))
    project.monitoring(update=True)
    again = project.monitoring(update=True)
    yield Stream(project, clean, dim, first, again)
    project.close()


def test_windows_close_every_drift_window_calls_once_and_alarm_only_after_the_shift(
    stream: Stream,
) -> None:
    assert stream.first["closed"] == [1, 2, 3]
    assert stream.again["closed"] == []  # nothing new: nothing closes twice
    windows = stream.again["windows"]
    assert [w["window"] for w in windows] == [1, 2, 3, 4, 5]
    assert all(w["calls"] == WINDOW and w["model_version"] == 1 for w in windows)
    assert [w["alarm"] for w in windows] == [False, False, False, True, True]
    for w in windows:
        assert set(w["scores"]) == {"input_mmd", "label_tv", "confidence_ks"}
        above = [k for k, v in w["scores"].items() if v > w["thresholds"][k]]
        assert bool(above) == w["alarm"] and (w["drift_score"] > 1) == w["alarm"]
        assert all(0 < p <= 1 for p in w["p_values"].values())
    # The windows follow each other: each starts after the one before ends.
    assert all(a["last_at"] <= b["first_at"] for a, b in itertools.pairwise(windows))
    ref = stream.again["reference"]
    assert ref["rows"] == 400 and ref["source"] == "held-out and evaluation rows"
    assert ref["temperature"] > 0 and ref["unavailable"] is None


def test_the_label_free_estimate_sits_beside_the_accuracy_the_answers_showed(
    stream: Stream,
) -> None:
    w1 = stream.again["windows"][0]
    right = sum(predicted == truth for _, predicted, truth in stream.clean[:50])
    assert w1["answered"] == 50 and w1["observed_accuracy"] == pytest.approx(right / 50)
    assert w1["estimate_error"] == pytest.approx(w1["estimated_accuracy"] - right / 50)
    truth_clean = np.mean([p == t for _, p, t in stream.clean])
    truth_dim = np.mean([p == t for _, p, t in stream.dim])
    est = [w["estimated_accuracy"] for w in stream.again["windows"]]
    assert all(abs(e - truth_clean) < 0.12 for e in est[:3]), (est, truth_clean)
    # After the shift the estimate falls with the true accuracy.
    assert max(est[3:]) < min(est[:3]) and truth_dim < truth_clean
    assert all(w["answered"] == 0 for w in stream.again["windows"][1:])


def test_each_alarm_queues_a_drift_alarm_webhook_with_its_numbers(stream: Stream) -> None:
    listed = [d for d in stream.project.webhook_deliveries(50) if d["event"] == "drift.alarm"]
    assert len(listed) == 2 and all(d["status"] == "pending" for d in listed)
    with stream.project.services.ctx.db.session() as s:
        sent = [d.payload for d in s.scalars(select(WebhookDelivery))]
    assert sorted(d["data"]["window"] for d in sent) == [4, 5]
    data = sent[0]["data"]
    assert data["scores"] and data["thresholds"] and data["calls"] == WINDOW


def test_the_api_the_metrics_and_the_cli_show_the_windows(stream: Stream) -> None:
    project = stream.project
    key, _ = project.create_key(["predict"], name="reader")
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.get("/v1/monitoring?limit=2", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [w["window"] for w in body["windows"]] == [4, 5] and body["window"] == WINDOW
        assert (
            c.get("/v1/monitoring?limit=0", headers={"Authorization": f"Bearer {key}"}).status_code
            == 422
        )
        c.app.state.runner.monitor()  # type: ignore[attr-defined]
        text = c.get("/metrics", headers={"Authorization": f"Bearer {key}"}).text
        assert "flywheel_drift_alarm 1.0" in text
        assert 'flywheel_drift_score{test="input_mmd"}' in text
        assert 'flywheel_window_accuracy{kind="estimated"}' in text
        sign_in(c, key)
        page = c.get("/").text
    charts = json.loads(re.search(r'id="charts-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    assert charts["drift"]["rule"] == 1.0 and len(charts["drift"]["y"]) == 5
    assert (
        charts["window_accuracy"]["series2"][0] == stream.again["windows"][0]["observed_accuracy"]
    )
    r = CliRunner().invoke(
        cli, ["monitor", "--project", str(project.settings.project_dir), "--json", "--no-update"]
    )
    assert r.exit_code == 0, r.output
    assert [w["alarm"] for w in json.loads(r.stdout)["windows"]][-2:] == [True, True]
    r = CliRunner().invoke(cli, ["monitor", "--project", str(project.settings.project_dir)])
    assert r.exit_code == 0 and "inputs" in r.stdout and "yes" in r.stdout


def test_a_drift_alarm_starts_a_retrain_once_enough_answers_arrived(stream: Stream) -> None:
    project = stream.project
    trigger, view = project.retrain_policy()
    assert trigger is None and view["drift_alarms"] == 2
    assert view["why"] == "a drift alarm; waiting for 60 new answers (50 so far)"
    for pid, _, truth in stream.dim[:10]:
        project.record_feedback(pid, label=truth, user_id="bob")
    runner = JobRunner(project)
    try:
        job_id = runner.tick()
        assert job_id is not None
        runner.futures[job_id].result(300)
        job = project.job(job_id)
        assert (job["trigger"], job["status"]) == ("drift", "succeeded"), job
        # The alarm is before the retrain: no second drift retrain from it.
        assert project.retrain_policy()[1]["drift_alarms"] == 0
    finally:
        runner.shutdown()


def test_the_estimate_is_calibrated_on_the_calls_answered_before_each_window(
    stream: Stream,
) -> None:
    w1, w2, w3 = stream.again["windows"][:3]
    # Window 1's answers arrived before window 2 and 3 closed, not before window 1 began.
    assert w1["calibration"]["rows"] == "0 answered calls and 400 reference rows"
    assert w2["calibration"]["rows"] == "50 answered calls and 400 reference rows"
    assert w3["calibration"] == w2["calibration"]
    assert w1["calibration"]["temperature"] != w2["calibration"]["temperature"]
    # The estimate is the mean of the calls' top confidence at that temperature.
    calls = stream.clean[100:200]
    probs = [_probs(stream.project, pid) for pid, _, _ in calls]
    expected = float(np.mean(scaled_confidence(np.array(probs), w2["calibration"]["temperature"])))
    assert w2["estimated_accuracy"] == pytest.approx(expected)


def _probs(project: Project, pid: str) -> list[float]:
    from flywheel.store.schema import Prediction

    labels = project.serving_model().labels
    with project.db.session() as s:
        p = s.get(Prediction, pid)
        assert p is not None
        return [float(p.probabilities.get(lab, 0.0)) for lab in labels]


def test_after_a_retrain_on_the_moved_traffic_the_reference_is_the_new_normal(
    stream: Stream,
) -> None:
    """Runs after the drift retrain above: its challenger, promoted, is judged against
    the dim calls of the windows that alarmed, so that more dim calls are no alarm and
    the clean camera coming back is one."""
    project = stream.project
    version = max(m.version for m in project.models())
    assert version == 2
    if project.production_version() != version:
        project.promote(version)
    images, _ = digits_arrays()
    rng = np.random.default_rng(1)
    for i in OUTSIDE[500:600]:
        project.predict(encode_png(_dim(images[i], rng)))
    for i in OUTSIDE[600:700]:
        project.predict(encode_png(images[i]))
    m = project.monitoring(update=True)
    dim, clean = m["windows"][-2:]
    assert (dim["model_version"], clean["model_version"]) == (2, 2)
    ref = m["reference"]
    assert ref["kind"] == "production" and ref["rows"] == 2 * WINDOW - 10, (
        ref
    )  # less the 10 trained on
    assert ref["source"].startswith("production's calls in windows 4-5 of version 1")
    assert (dim["alarm"], clean["alarm"]) == (False, True), (dim["scores"], dim["thresholds"])


def test_without_enough_untrained_rows_a_window_says_why_and_still_estimates(
    tmp_path: Path,
) -> None:
    make_project(tmp_path / "small").close()
    project = Project.open(tmp_path / "small", drift_window=20, drift_min_window=10)
    try:
        images, _ = digits_arrays()
        for i in range(1000, 1020):
            project.predict(encode_png(images[i]))
        m = project.monitoring(update=True)
        (w,) = m["windows"]
        assert w["alarm"] is False and w["scores"] is None
        assert "60 reference rows" in w["unavailable"] and "needs at least 100" in w["unavailable"]
        assert 0 < w["estimated_accuracy"] <= 1
    finally:
        project.close()
