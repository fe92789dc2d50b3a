"""The spine on a real folder of photos (cifar10-mini), when the shared datasets are present."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import select

from flywheel import Project
from flywheel.data import ImageFolderSource
from flywheel.serving import BackgroundServer
from flywheel.store.schema import Feedback, Prediction

CLASSES = ("airplane", "cat", "ship")


def test_init_train_serve_round_trip_on_cifar_folders(datasets_dir: Path, tmp_path: Path) -> None:
    # A slice of the real folders (30 photos of 3 classes) keeps the test short.
    src = datasets_dir / "cifar10-mini" / "train"
    data = tmp_path / "data"
    for c in CLASSES:
        (data / c).mkdir(parents=True)
        for f in sorted((src / c).glob("*.jpg"))[:30]:
            shutil.copy(f, data / c / f.name)

    project = Project.init(tmp_path / "p", ImageFolderSource(data), settings={"epochs": 2})
    info = project.dataset()
    assert info.labels == list(CLASSES)
    assert info.n_train + info.n_holdout == 90
    dv_prep = info.preprocessing
    assert (dv_prep["mode"], dv_prep["height"], dv_prep["width"]) == ("RGB", 32, 32)
    result = project.train()
    assert result.promoted
    assert result.model.metrics["n"] == info.n_holdout

    photo = sorted((datasets_dir / "cifar10-mini" / "test" / "cat").glob("*.jpg"))[0]
    with BackgroundServer(project) as server, httpx.Client(base_url=server.url) as c:
        r = c.post(
            "/v1/predict",
            files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
            headers={"X-User-Id": "tester"},
        )
        assert r.status_code == 200
        body = r.json()
        assert set(body["probabilities"]) == set(CLASSES)
        assert np.isclose(sum(body["probabilities"].values()), 1.0, atol=1e-5)
        r = c.post(
            "/v1/feedback",
            json={"prediction_id": body["prediction_id"], "label": "cat"},
            headers={"X-User-Id": "tester"},
        )
        assert r.status_code == 201
        fid = r.json()["feedback_id"]

    with project.db.session() as s:
        fb = s.get(Feedback, fid)
        assert fb is not None
        assert (fb.label, fb.user_id, fb.prediction_id) == (
            "cat",
            project.pseudonym("tester"),
            body["prediction_id"],
        )
        pred = s.scalars(select(Prediction)).one()
        assert project.blobs.get(pred.input_hash) == photo.read_bytes()
    project.close()
