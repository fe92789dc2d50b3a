"""Explanations: the stroke outweighs the empty border, the overlay has the input's size,
they are cached, served over HTTP, and forgotten with the user."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from flywheel import Project
from flywheel.data import digits_arrays
from flywheel.serving import create_app
from flywheel.store.schema import Explanation
from tests.factories import make_project

pytest.importorskip("captum")


def _digit(i: int, side: int) -> tuple[bytes, np.ndarray]:
    """Digit ``i`` as a PNG of ``side`` x ``side`` pixels, and its pixels in [0, 1]."""
    images, _ = digits_arrays()
    img = Image.fromarray(np.uint8(images[i] * (255 / 16))).resize(
        (side, side), Image.Resampling.NEAREST
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), np.asarray(img, np.float32) / 255.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return make_project(
        tmp_path_factory.mktemp("explain") / "p",
        n_train=400,
        n_holdout=100,
        settings={"epochs": 8, "patience": 8, "image_size": 16},
    )


def test_attributions_weigh_the_stroke_over_the_empty_border(trained: Project) -> None:
    for i in (1500, 1501, 1502):
        content, pixels = _digit(i, 16)
        p = trained.predict(content)
        ex = trained.explain(p.prediction_id)
        assert ex["method"] == "integrated_gradients" and ex["target"] == p.label
        heat = np.asarray(ex["map"])
        assert heat.shape == (16, 16) and heat.max() == pytest.approx(1.0)
        stroke = pixels > 0.5
        border = np.zeros_like(stroke)
        border[[0, -1], :] = border[:, [0, -1]] = True
        border &= pixels < 0.05
        assert stroke.any() and border.any()
        assert heat[stroke].mean() > 5 * heat[border].mean()
        assert heat[stroke].sum() / heat.sum() > 0.8  # most of the attribution is on ink


def test_the_overlay_has_the_inputs_size_and_explanations_are_cached(trained: Project) -> None:
    content, _ = _digit(1503, 40)  # the model reads 16x16; the overlay keeps 40x40
    p = trained.predict(content)
    png = trained.explanation_png(p.prediction_id)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (40, 40)
    again = trained.explain(p.prediction_id)
    other = trained.explain(p.prediction_id, target="0" if p.label != "0" else "1")
    assert again["target"] == p.label and other["target"] != p.label
    with trained.db.session() as s:
        n = s.scalar(select(func.count()).select_from(Explanation))
    assert n is not None and n >= 2
    trained.explain(p.prediction_id)
    with trained.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Explanation)) == n  # cached


def test_explanations_over_http_and_forgotten_with_the_user(tmp_path: Path) -> None:
    project = make_project(tmp_path / "h", settings={"image_size": 8})
    content, _ = _digit(1504, 24)
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post(
            "/v1/predict",
            files={"file": ("d.png", content, "image/png")},
            headers={"X-User-Id": "ada"},
        )
        pid = r.json()["prediction_id"]
        # What is drawn over ada's input is not for anyone on the machine, nor for the
        # app's predict key: it needs a reviewer's.
        assert c.post("/v1/explain", json={"prediction_id": pid}).status_code == 401
        assert c.get(f"/v1/explain/{pid}.png").status_code == 401
        shipped, _ = project.create_key(["predict"])
        r = c.get(f"/v1/explain/{pid}.png", headers={"Authorization": f"Bearer {shipped}"})
        assert r.status_code == 403
        key, _ = project.create_key(["feedback"])
        c.headers["Authorization"] = f"Bearer {key}"
        body = c.post("/v1/explain", json={"prediction_id": pid}).json()
        assert body["overlay"] is True and body["shape"] == [8, 8]
        png = c.get(f"/v1/explain/{pid}.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.headers["x-content-type-options"] == "nosniff"
        assert Image.open(io.BytesIO(png.content)).size == (24, 24)
        assert c.post("/v1/explain", json={"prediction_id": "nope"}).status_code == 404
        bad = c.post("/v1/explain", json={"prediction_id": pid, "target": "cat"})
        assert bad.status_code == 422 and "unknown target 'cat'" in bad.json()["detail"]
    with project.db.session() as s:
        overlay = s.scalar(select(Explanation.png_hash))
    assert overlay is not None and project.blobs.exists(overlay)
    out = project.forget("ada")
    assert out["erased"]["explanations"] == 1
    assert not project.blobs.exists(overlay)  # the overlay drew her input
    project.close()


def test_audio_and_text_explanations(tmp_path: Path) -> None:
    """Audio: a map over (mel bands, frames) and an overlay of that size; text: one score
    per word piece, in order, and masking the spam words lowers the spam score."""
    from flywheel.data import ListSource, RawExample
    from tests.data.test_audio import tone, wav_bytes

    rows = [
        RawExample(wav_bytes(tone(f + 7 * i, 0.4, amp=0.3 + 0.02 * i)), lab, split=sp)
        for i in range(14)
        for f, lab in ((300.0, "low"), (2500.0, "high"))
        for sp in ["train" if i < 10 else "holdout"]
    ]
    audio = Project.init(
        tmp_path / "a", ListSource("tones", rows), task="audio-classification",
        settings={"epochs": 3},
    )  # fmt: skip
    audio.train()
    p = audio.predict(wav_bytes(tone(2500.0, 0.4)))
    ex = audio.explain(p.prediction_id)
    heat = np.asarray(ex["map"])
    assert heat.ndim == 2 and heat.max() == pytest.approx(1.0)
    png = Image.open(io.BytesIO(audio.explanation_png(p.prediction_id)))
    assert png.size == (heat.shape[1], heat.shape[0])
    audio.close()

    pytest.importorskip("transformers")
    texts = [(f"win a free prize now {i}", "spam") for i in range(10)] + [
        (f"see you at lunch today {i}", "ham") for i in range(10)
    ]
    text = Project.init(
        tmp_path / "t",
        ListSource("t", [
            RawExample(t.encode(), lab, split="train" if i % 5 else "holdout")
            for i, (t, lab) in enumerate(texts)
        ]),
        task="text-classification",
        settings={"epochs": 30, "learning_rate": 1e-2},
    )  # fmt: skip
    text.train()
    p = text.predict(b"free prize")
    ex = text.explain(p.prediction_id)
    assert ex["method"] == "feature_ablation"
    assert [i["name"] for i in ex["items"]] == ["free", "prize"]
    assert p.label == "spam" and ex["target"] == "spam"
    assert all(i["score"] > 0 for i in ex["items"])  # each word holds the answer up
    assert ex["overlay"] is False
    text.close()


def test_explain_from_the_cli(trained: Project, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from flywheel.cli import app

    content, _ = _digit(1505, 24)
    p = trained.predict(content)
    root = str(trained.settings.project_dir)
    out = tmp_path / "overlay.png"
    r = CliRunner().invoke(
        app, ["explain", p.prediction_id, "-p", root, "--png", str(out), "--json"]
    )
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)
    assert body["prediction_id"] == p.prediction_id and body["shape"] == [16, 16]
    with Image.open(out) as img:
        assert img.size == (24, 24)
    r = CliRunner().invoke(app, ["explain", "nope", "-p", root])
    assert r.exit_code == 1 and "prediction 'nope' not found" in str(r.exception)
