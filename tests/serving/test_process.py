"""`flywheel serve` as its users run it: a process, SIGTERM, several workers, hot swaps."""

from __future__ import annotations

import itertools
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from flywheel import Project
from flywheel.data import digits_arrays
from flywheel.serving import BackgroundServer, create_app
from flywheel.store.schema import Feedback, Prediction
from tests.factories import digit_png, make_project

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
LABELS = digits_arrays()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    """`flywheel serve` in a child process on a free loopback port."""

    def __init__(self, project_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [FLYWHEEL, "serve", "--project", str(project_dir), "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Readiness: poll /healthz until it answers (bounded by the child being alive).
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit status. uvicorn re-raises the signal after its graceful
        shutdown, so a clean stop exits with -SIGTERM (or 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        return self.proc.returncode, out


class Traffic:
    """Clients predicting (and, with ``feedback``, answering) until the server goes away
    or they are told to stop. Every answer and error is recorded."""

    def __init__(self, url: str, clients: int, *, feedback: bool = False) -> None:
        self.url = url
        self.feedback = feedback
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.predicted: list[str] = []
        self.answered: list[str] = []
        self.versions: list[int] = []
        self.bad_status: list[str] = []  # an HTTP error answer: never acceptable
        self.transport: list[tuple[float, str]] = []  # (when, error): no answer at all
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            n = 0
            while not self.stop.is_set():
                item = (i * 131 + n) % 1797
                n += 1
                try:
                    files = {"file": ("d.png", digit_png(item), "image/png")}
                    r = c.post("/v1/predict", files=files, headers={"X-User-Id": f"u{i}"})
                    if r.status_code != 200:
                        with self.lock:
                            self.bad_status.append(f"predict {r.status_code}: {r.text}")
                        continue
                    body = r.json()
                    with self.lock:
                        self.predicted.append(body["prediction_id"])
                        self.versions.append(body["model_version"])
                    if self.feedback:
                        answer = {
                            "prediction_id": body["prediction_id"],
                            "label": str(LABELS[item]),
                        }
                        f = c.post("/v1/feedback", json=answer, headers={"X-User-Id": f"u{i}"})
                        with self.lock:
                            if f.status_code == 201:
                                self.answered.append(f.json()["feedback_id"])
                            else:
                                self.bad_status.append(f"feedback {f.status_code}: {f.text}")
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.transport.append((time.monotonic(), repr(exc)))
                    if isinstance(exc, httpx.ConnectError):
                        return  # the server is gone

    def wait_for_answers(self, n: int) -> None:
        while True:
            with self.lock:
                if len(self.predicted) >= n or self.bad_status:
                    return
            assert all(t.is_alive() for t in self.threads), "the clients stopped early"
            self.stop.wait(0.01)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def _count(project_dir: Path, **settings: Any) -> tuple[set[str], int]:
    p = Project.open(project_dir, **settings)
    with p.db.session() as s:
        ids = set(s.scalars(select(Prediction.id)))
        feedback = s.scalar(select(func.count()).select_from(Feedback)) or 0
    p.close()
    return ids, feedback


def test_sigterm_under_load_answers_what_it_accepted_and_logs_every_answer(
    tmp_path: Path,
) -> None:
    make_project(tmp_path / "p").close()
    server = Served(tmp_path / "p")
    with Traffic(server.url, clients=8) as load:
        load.wait_for_answers(200)
        signalled = time.monotonic()
        code, out = server.stop()
        # The clients see the server go; each one stops at its first refused connection.
        for t in load.threads:
            t.join(120)
    assert code in (0, -signal.SIGTERM), out
    assert "Traceback" not in out, out
    # The server's own lines: where it listens once it answers, what it drained at the end.
    assert f"flywheel: ready on http://127.0.0.1:{server.port} " in out, out
    assert "model v1, onnx backend" in out
    assert out.index("ready on") < out.index("stopping:") < out.index("stopped:")
    assert load.bad_status == []  # no request was answered with an error
    # Requests without an answer are only those that met the closed socket after the signal.
    assert all(when >= signalled for when, _ in load.transport), load.transport
    logged, _ = _count(tmp_path / "p")
    # Every answered prediction is in the store: nothing was lost in the queue at exit.
    assert set(load.predicted) == logged
    assert len(logged) >= 200
    assert f"stopped: {len(logged)} predictions committed by this process" in out, out


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_sigkill_under_load_loses_no_acknowledged_prediction_or_answer(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """The durable log (the default): killed mid-load, three times; every prediction
    and every answer acknowledged is in the store once the project is opened again (the
    benchmark ``benchmarks/crash.py`` runs the same for many cycles and both modes)."""
    settings = {}
    if store == "postgresql":
        settings["database_url"] = request.getfixturevalue("postgres_url")
    make_project(tmp_path / "p", settings=settings).close()
    predicted: set[str] = set()
    answered: set[str] = set()
    for cycle in range(3):
        server = Served(tmp_path / "p")
        with Traffic(server.url, clients=6, feedback=True) as load:
            load.wait_for_answers(40)
            server.proc.kill()
            server.proc.communicate(timeout=60)
        assert load.bad_status == [], cycle
        predicted |= set(load.predicted)
        answered |= set(load.answered)
        p = Project.open(tmp_path / "p")  # opening it replays what the kill left
        with p.db.session() as s:
            logged = set(s.scalars(select(Prediction.id)))
            stored = set(s.scalars(select(Feedback.id)))
        p.close()
        assert predicted - logged == set(), cycle
        assert answered - stored == set(), cycle
        assert not list((tmp_path / "p" / "journal").glob("*.journal"))  # all replayed
    assert len(predicted) >= 120


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_several_workers_share_one_store(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    settings = {}
    if store == "postgresql":
        settings["database_url"] = request.getfixturevalue("postgres_url")
    make_project(tmp_path / "p", settings=settings).close()
    server = Served(tmp_path / "p", "--workers", "2")
    with Traffic(server.url, clients=6, feedback=True) as load:
        load.wait_for_answers(150)
    code, out = server.stop()
    assert code in (0, -signal.SIGTERM), out
    assert "Traceback" not in out, out
    assert load.bad_status == [] and load.transport == []
    logged, feedback = _count(tmp_path / "p")
    assert set(load.predicted) == logged
    assert feedback == len(load.answered) == len(load.predicted)  # every 201 is a row
    assert out.count("2 workers") == 1


def test_two_server_processes_on_postgresql_never_retrain_at_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """`--workers 2`: two processes, each with its runner and policy ticker, one store.
    Answers cross the policy's threshold (both tickers see it), then retrains are asked
    of both: the jobs run one after another, and the threshold started exactly one."""
    settings = {
        "database_url": postgres_url,
        "retrain_min_feedback": 6,
        "retrain_cooldown_s": 0,
        "policy_check_s": 0.2,
    }
    project = make_project(tmp_path / "p", settings=settings)
    key, _ = project.create_key(["admin"])
    project.close()
    admin = {"Authorization": f"Bearer {key}"}
    server = Served(tmp_path / "p", "--workers", "2")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in range(1000, 1006):  # images the project does not hold
                files = {"file": ("d.png", digit_png(i), "image/png")}
                pid = c.post("/v1/predict", files=files).json()["prediction_id"]
                r = c.post("/v1/feedback", json={"prediction_id": pid, "label": str(LABELS[i])})
                assert r.status_code == 201
            # One of the two tickers starts a retrain for the threshold.
            deadline = time.monotonic() + 60
            while not c.get("/v1/jobs", headers=admin).json()["jobs"]:
                assert time.monotonic() < deadline, "the policy started no retrain"
                time.sleep(0.1)
            # New connections spread over both workers; each queues its own job.
            for _ in range(6):
                with httpx.Client(base_url=server.url, timeout=60, headers=admin) as fresh:
                    assert fresh.post("/v1/retrain").status_code == 202
            deadline = time.monotonic() + 300
            while True:
                jobs = c.get("/v1/jobs", headers=admin).json()["jobs"]
                if jobs and all(j["status"] in ("succeeded", "failed") for j in jobs):
                    break
                assert time.monotonic() < deadline, jobs
                time.sleep(0.2)
    finally:
        _, out = server.stop()
    assert "Traceback" not in out, out
    assert {j["status"] for j in jobs} == {"succeeded"}, jobs
    assert [j["trigger"] for j in jobs].count("feedback") == 1
    spans = sorted(
        (datetime.fromisoformat(j["started_at"]), datetime.fromisoformat(j["finished_at"]))
        for j in jobs
    )
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin  # never two at once


def test_twenty_promotions_and_rollbacks_under_load_fail_no_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flywheel")
    project = make_project(tmp_path / "p")
    v2 = project.train(project.train_config(seed=1)).model.version
    if project.production_version() == v2:  # the gate promoted it: start from v1
        project.rollback()
    key, _ = project.create_key(["admin"])
    admin = {"Authorization": f"Bearer {key}"}
    with (
        BackgroundServer(project) as server,
        Traffic(server.url, clients=6) as load,
        httpx.Client(base_url=server.url, headers=admin, timeout=60) as c,
    ):
        for cycle in range(20):
            r = c.post(f"/v1/models/{v2}/promote")
            assert r.status_code == 200, r.text
            n = len(load.versions)
            load.wait_for_answers(n + 3)
            r = c.post("/v1/rollback")
            assert r.status_code == 200, r.text
            load.wait_for_answers(n + 6)
            assert project.production_version() == 1, cycle
    project.close()
    assert load.bad_status == [] and load.transport == []
    assert set(load.versions) == {1, v2}
    # The server's log names each move and its reason.
    moves = [r.getMessage() for r in caplog.records if "production v" in r.getMessage()]
    tail = "through the API); serving it (onnx backend)"
    assert moves.count(f"production v1 -> v{v2} (promote: promoted {tail}") == 20
    assert moves.count(f"production v{v2} -> v1 (rollback: rolled back {tail}") == 20


def test_feedback_finds_a_prediction_still_in_the_log_queue(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    write = project.log_predictions

    def slow_write(rows: Sequence[dict[str, Any]]) -> None:
        assert release.wait(60)
        write(rows)

    monkeypatch.setattr(project, "log_predictions", slow_write)
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/predict", files={"file": ("d.png", digit_png(5), "image/png")})
        assert r.status_code == 200
        pid = r.json()["prediction_id"]
        with project.db.session() as s:
            assert s.get(Prediction, pid) is None  # answered, not yet committed
        answer: dict[str, Any] = {}

        def send() -> None:
            answer["r"] = c.post("/v1/feedback", json={"prediction_id": pid, "label": "5"})

        sender = threading.Thread(target=send)
        sender.start()
        sender.join(0.3)
        assert sender.is_alive()  # waiting for the prediction's commit, not a 404
        release.set()
        sender.join(60)
        assert answer["r"].status_code == 201, answer["r"].text
        with project.db.session() as s:
            assert s.get(Prediction, pid) is not None
            fb = s.scalars(select(Feedback).where(Feedback.prediction_id == pid)).one()
            assert fb.label == "5"
