"""A real server on a loopback port: hot swap and background retrains under load."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from flywheel import Project
from flywheel.data import digits_arrays
from flywheel.serving import BackgroundServer
from tests.factories import digit_png, make_project


@pytest.fixture(scope="function")
def live(tmp_path: Path) -> Iterator[tuple[Project, str]]:
    # A short reload interval so that a promotion made elsewhere is seen quickly.
    project = make_project(tmp_path / "p", settings={"reload_interval_s": 0.05})
    with BackgroundServer(project) as server:
        yield project, server.url
    project.close()


class Load:
    """Clients sending predictions until told to stop; records every answer."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.versions: list[int] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            n = 0
            while not self.stop.is_set():
                files = {"file": ("d.png", digit_png((i * 97 + n) % 1797), "image/png")}
                try:
                    r = c.post("/v1/predict", files=files)
                    ok = r.status_code == 200
                except httpx.HTTPError as exc:
                    ok, r = False, None
                    detail = repr(exc)
                with self.lock:
                    if ok and r is not None:
                        self.versions.append(r.json()["model_version"])
                    else:
                        self.failures.append(r.text if r is not None else detail)
                n += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def wait_for(self, predicate: Callable[[int], bool], *, count: int) -> None:
        """Block until ``count`` more answers satisfy ``predicate``.

        Bounded by answers, not by time: 5,000 answers without a match fail the test.
        """
        start = len(self.versions)
        while True:
            with self.lock:
                new = self.versions[start:]
                if sum(map(predicate, new)) >= count or self.failures:
                    return
                assert len(new) < 5000, "the server never served the expected version"
            self.stop.wait(0.01)


def test_promotions_made_elsewhere_are_picked_up_with_no_failed_request(
    live: tuple[Project, str],
) -> None:
    project, url = live
    v2 = project.train(project.train_config(seed=1)).model.version
    # The CLI (another process, another Project) moves the alias; the server must follow.
    elsewhere = Project(project.settings)
    with Load(url) as load:
        for _ in range(5):
            elsewhere.promote(v2)
            load.wait_for(lambda v: v == v2, count=5)
            elsewhere.rollback()
            load.wait_for(lambda v: v == 1, count=5)
    elsewhere.close()
    assert load.failures == []
    assert {1, v2} <= set(load.versions)


def test_predictions_keep_flowing_while_a_retrain_runs(live: tuple[Project, str]) -> None:
    project, url = live
    _, labels = digits_arrays()
    key, _ = project.create_key(["admin"])
    admin = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(400, 460):
            files = {"file": ("d.png", digit_png(i), "image/png")}
            pid = c.post("/v1/predict", files=files).json()["prediction_id"]
            r = c.post("/v1/feedback", json={"prediction_id": pid, "label": str(labels[i])})
            assert r.status_code == 201
        job_id = c.post("/v1/retrain", headers=admin, json={"epochs": 8}).json()["job_id"]
        during = 0
        failures = []
        while True:
            job = c.get(f"/v1/jobs/{job_id}", headers=admin).json()
            if job["status"] in ("succeeded", "failed"):
                break
            r = c.post("/v1/predict", files={"file": ("d.png", digit_png(1), "image/png")})
            if r.status_code != 200:
                failures.append(r.text)
            elif job["status"] == "running":
                during += 1
    assert job["status"] == "succeeded", job["error"]
    assert failures == []
    assert during > 0, "no prediction was answered while the retrain was running"
    assert job["result"]["feedback_used"] == 60
