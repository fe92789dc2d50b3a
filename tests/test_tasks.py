"""Every task once around the loop: init, train, serve, predict, feedback, retrain."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from flywheel import Project
from flywheel.data import DiabetesSource, ListSource, RawExample, SourceOptions, resolve_source
from flywheel.serving import create_app
from tests.factories import FAST, digits_subset

TOPICS = {
    "sport": [
        "the team won the match",
        "a great goal in the final",
        "the coach praised players",
        "fans cheered the striker",
        "the league title race",
        "a late penalty save",
    ],
    "food": [
        "the soup was delicious",
        "we baked fresh bread",
        "a spicy curry recipe",
        "the chef grilled fish",
        "sweet apple pie dessert",
        "a salad with olive oil",
    ],
}


def _wav(freq: float, seconds: float = 0.3, rate: int = 8000, seed: int = 0) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.05, t.shape)
    buf = io.BytesIO()
    sf.write(
        buf,
        (0.5 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32),
        rate,
        format="WAV",
        subtype="PCM_16",
    )
    return buf.getvalue()


def image_case(tmp: Path) -> tuple[Any, str, Callable[[], dict[str, Any]], dict[str, Any]]:
    source = ListSource("digits-test", digits_subset(120, 60))
    req = {"files": {"file": ("d.png", digits_subset(1, 0, offset=900)[0].content, "image/png")}}
    return source, "image-classification", lambda: req, {"label": "3"}


def regression_case(tmp: Path) -> tuple[Any, str, Callable[[], dict[str, Any]], dict[str, Any]]:
    feats = next(iter(DiabetesSource()))
    import json

    features = json.loads(feats.content)["features"]
    features["age"] += 0.001  # a new patient, not one of the dataset's
    return (
        DiabetesSource(),
        "regression",
        lambda: {"json": {"features": features}},
        {"value": 151.0},
    )


def audio_case(tmp: Path) -> tuple[Any, str, Callable[[], dict[str, Any]], dict[str, Any]]:
    pytest.importorskip("librosa")
    root = tmp / "wavs"
    root.mkdir()
    for n in range(12):
        for label, freq in (("low", 300.0), ("high", 1500.0)):
            user = f"u{n % 3}"
            (root / f"{label}_{user}_{n}.wav").write_bytes(_wav(freq * (1 + n / 50), seed=n))
    source, task = resolve_source(str(root))
    assert task == "audio-classification"
    req = {"files": {"file": ("x.wav", _wav(1450.0, seed=99), "audio/wav")}}
    return source, task, lambda: req, {"label": "high"}


def text_case(tmp: Path) -> tuple[Any, str, Callable[[], dict[str, Any]], dict[str, Any]]:
    pytest.importorskip("transformers")
    path = tmp / "texts.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for topic, lines in TOPICS.items():
            for line in lines:
                w.writerow([line, topic])
                w.writerow([f"really, {line}", topic])
    source, task = resolve_source(str(path), SourceOptions(task="text-classification"))
    return (
        source,
        task,
        lambda: {"json": {"text": "the goalkeeper saved a penalty"}},
        {"label": "sport"},
    )


@pytest.mark.parametrize(
    "make",
    [image_case, regression_case, audio_case, text_case],
    ids=["image", "regression", "audio", "text"],
)
def test_each_task_goes_once_around_the_loop(
    make: Callable[[Path], tuple[Any, str, Callable[[], dict[str, Any]], dict[str, Any]]],
    tmp_path: Path,
) -> None:
    source, task, request, answer = make(tmp_path)
    project = Project.init(tmp_path / "p", source, task=task, settings=FAST)
    first = project.train()
    assert first.promoted
    key, _ = project.create_key(["admin"])
    admin = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/predict", headers={"X-User-Id": "alice"}, **request())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == 1
        if task == "regression":
            assert set(body) == {"prediction_id", "model_version", "value"}
            assert np.isfinite(body["value"])
        else:
            assert set(body) == {"prediction_id", "model_version", "label", "probabilities"}
        r = c.post(
            "/v1/feedback",
            json={"prediction_id": body["prediction_id"], **answer},
            headers={"X-User-Id": "alice"},
        )
        assert r.status_code == 201, r.text
        job_id = c.post("/v1/retrain", headers=admin).json()["job_id"]
        c.app.state.runner.futures[job_id].result(timeout=600)  # type: ignore[attr-defined]
        job = c.get(f"/v1/jobs/{job_id}", headers=admin).json()
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["feedback_used"] == 1
        assert job["result"]["model_version"] == 2
        assert job["result"]["dataset_version"] == 2
        assert c.post("/v1/predict", **request()).status_code == 200
        # The wrong kind of answer is refused with the reason.
        wrong = {"label": "x"} if task == "regression" else {"value": 1.0}
        r = c.post(
            "/v1/feedback",
            json={"prediction_id": body["prediction_id"], **wrong},
            headers={"X-User-Id": "alice"},
        )
        assert r.status_code == 422
    project.close()


def test_regression_predict_rejects_unknown_and_missing_features(tmp_path: Path) -> None:
    project = Project.init(tmp_path / "p", DiabetesSource(), task="regression", settings=FAST)
    project.train()
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/predict", json={"features": {"age": 0.1}})
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert detail.startswith("features do not match the model's columns")
        assert "missing ['bmi', 'bp'" in detail
        r = c.post("/v1/predict", json={"features": {"age": "old"}})
        assert r.status_code == 422
        r = c.post("/v1/predict", files={"file": ("x.png", b"abc", "image/png")})
        assert r.status_code == 422
    project.close()


def test_regression_evaluate_reports_mse_and_r2(tmp_path: Path) -> None:
    project = Project.init(
        tmp_path / "p",
        DiabetesSource(),
        task="regression",
        settings={**FAST, "epochs": 40, "patience": 10},
    )
    result = project.train()
    report = project.evaluate()
    assert set(report) >= {"mse", "rmse", "mae", "r2", "n"}
    assert report["n"] == result.model.metrics["n"] == project.dataset().n_holdout == 88
    assert report["mse"] == pytest.approx(result.decision.challenger_score)
    assert report["r2"] > 0.2  # the MLP explains a share of the variance
    project.close()


def test_image_evaluate_on_outside_data(tmp_path: Path) -> None:
    from tests.factories import write_class_folders

    project = Project.init(tmp_path / "p", ListSource("d", digits_subset(120, 60)), settings=FAST)
    project.train()
    from flywheel.data import digits_arrays

    images, labels = digits_arrays()
    folders = write_class_folders(
        tmp_path / "outside",
        {str(d): [images[i] for i in range(1000, 1200) if labels[i] == d][:4] for d in range(10)},
    )
    source, _ = resolve_source(str(folders))
    report = project.evaluate(source=source)
    assert report["n"] == 40
    assert report["data"] == str(folders.resolve())
    assert np.array(report["confusion_matrix"]).sum() == 40
    bad = write_class_folders(tmp_path / "bad", {"0": [images[0]], "zebra": [images[1]]})
    with pytest.raises(Exception, match="labels the model does not know: \\['zebra'\\]"):
        project.evaluate(source=resolve_source(str(bad))[0])
    project.close()


def test_text_and_tabular_sources_are_guessed(tmp_path: Path) -> None:
    tab = tmp_path / "t.csv"
    tab.write_text("a,b,y\n1,2,3\n4,5,6\n")
    _, task = resolve_source(str(tab), SourceOptions(target="y"))
    assert task == "regression"
    man = tmp_path / "m.csv"
    man.write_text("path,label\nx.png,a\n")
    _, task = resolve_source(str(man))
    assert task == "image-classification"
    odd = tmp_path / "o.csv"
    odd.write_text("foo,bar\n1,2\n")
    from flywheel.errors import DataError

    with pytest.raises(DataError, match=r"cannot tell what o\.csv holds"):
        resolve_source(str(odd))


def test_raw_example_value_and_label_are_exclusive_per_task(tmp_path: Path) -> None:
    from flywheel.errors import DataError

    rows = [RawExample(b"{}", None, value=None)]
    with pytest.raises(DataError):
        Project.init(tmp_path / "p", ListSource("x", rows), task="regression")
    assert not (tmp_path / "p").exists()
