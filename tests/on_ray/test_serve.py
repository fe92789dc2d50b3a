"""`flywheel serve --on ray` as its users run it, a process, on the session's two-node
cluster: two replicas answer; a promote and a rollback through the API, and a promote
with the CLI, each under load, reach every replica by an in-place reconfigure (the alias
poll is off here), with no failed request and no replica restarted; SIGTERM stops it
cleanly, every logged prediction committed and nothing of Serve left on the cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from flywheel import Project
from flywheel.cli import app as cli_app
from flywheel.scale.serve import APP, DEPLOYMENT
from flywheel.store.schema import Prediction
from tests.factories import digit_png, make_project
from tests.on_ray.cluster import LocalCluster

#: Ray Serve's schemas, as it imports them: Ray's deprecations, not ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using extra keyword arguments on `Field`:pydantic.warnings.PydanticDeprecatedSince20"
)
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    """`flywheel serve --on ray` in a child process, and its project."""

    root: Path
    v2: int
    key: str
    url: str
    proc: subprocess.Popen[str]


@pytest.fixture(scope="module")
def served(ray_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A project with v1 in production and a v2 beside it, served by two replicas (a
    quarter CPU each: they and Serve's own actors fit the cluster's two CPUs) without the
    alias poll, so that only a reconfigure can move a replica that did not answer the move.
    The last test stops it."""
    root = tmp_path_factory.mktemp("served") / "p"
    project = make_project(root)
    v2 = project.train(project.train_config(seed=1)).model.version
    if project.production_version() == v2:  # the gate promoted it: start from v1
        project.rollback()
    key, _ = project.create_key(["admin"])
    project.close()
    port = free_port()
    env = {
        **os.environ,  # FLYWHEEL_RAY_ADDRESS: the session's cluster
        "FLYWHEEL_SERVE_REPLICAS": "2",
        "FLYWHEEL_SERVE_REPLICA_CPUS": "0.25",
        "FLYWHEEL_RELOAD_INTERVAL_S": "3600",
    }
    cmd = [FLYWHEEL, "serve", "--on", "ray", "--project", str(root), "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200 and _all_up(2):
                    break
            except (httpx.HTTPError, KeyError):  # not up, or the application not there yet
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        yield Served(root, v2, key, url, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


class Load:
    """Client threads predicting with an API key until stopped; every answer recorded."""

    def __init__(self, url: str, key: str, clients: int = 3) -> None:
        self.url, self.key = url, key
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[float, int]] = []  # (when, model_version)
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, i: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "X-User-Id": f"u{i}"}
        with httpx.Client(base_url=self.url, timeout=60, headers=headers) as c:
            n = 0
            while not self.stop.is_set():
                n += 1
                try:
                    files = {"file": ("d.png", digit_png((i * 131 + n) % 1797), "image/png")}
                    r = c.post("/v1/predict", files=files)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failed.append(repr(exc))
                    continue
                with self.lock:
                    if r.status_code == 200:
                        self.answers.append((time.monotonic(), r.json()["model_version"]))
                    else:
                        self.failed.append(f"{r.status_code}: {r.text[:200]}")

    def versions_since(self, t: float) -> list[int]:
        with self.lock:
            return [v for when, v in self.answers if when > t]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _deployment() -> dict[str, Any]:
    from ray.serve.context import _get_global_client

    client: Any = _get_global_client()
    details = client.get_serve_details()
    deployment: dict[str, Any] = details["applications"][APP]["deployments"][DEPLOYMENT]
    return deployment


def _replicas() -> set[tuple[str, str, int]]:
    """Each replica's id, actor and process."""
    return {(r["replica_id"], r["actor_id"], r["pid"]) for r in _deployment()["replicas"]}


def _all_up(n: int) -> bool:
    d = _deployment()
    states = [str(r["state"]).rsplit(".", 1)[-1] for r in d["replicas"]]
    return states == ["RUNNING"] * n and str(d["status"]).endswith("HEALTHY")


def _reconfigured(version: int, timeout_s: float = 60.0) -> None:
    """Until Serve has run every replica's reconfigure for ``version``."""
    deadline = time.monotonic() + timeout_s
    while True:
        d = _deployment()
        states = {str(r["state"]).rsplit(".", 1)[-1] for r in d["replicas"]}
        config = d["deployment_config"].get("user_config")
        healthy = str(d["status"]).endswith("HEALTHY")
        if config == {"production": version} and states == {"RUNNING"} and healthy:
            return
        assert time.monotonic() < deadline, d
        time.sleep(0.2)


def _predict_many(url: str, key: str, n: int) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
        return [
            c.post("/v1/predict", files={"file": ("d.png", digit_png(k), "image/png")})
            .raise_for_status()
            .json()["model_version"]
            for k in range(n)
        ]


def test_the_replicas_answer_as_the_uvicorn_server_does(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.key}"}
    with httpx.Client(base_url=served.url, timeout=60, headers=headers) as c:
        health = c.get("/healthz").json()
        assert health == {"status": "ok", "production_version": 1, "serving_version": 1}
        r = c.post("/v1/predict", files={"file": ("d.png", digit_png(7), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == 1
        assert c.get("/v2/health/ready").status_code == 200
        # The same app: keys and Host checks apply behind Serve's proxy as under uvicorn.
        assert c.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 421
    assert len(_replicas()) == 2


def _moved_everywhere(served: Served, load: Load, version: int) -> None:
    """Serve ran every replica's reconfigure; then many answers, over both replicas,
    all carry ``version``."""
    _reconfigured(version)
    deadline = time.monotonic() + 30
    while set(_predict_many(served.url, served.key, 10)) != {version}:
        assert time.monotonic() < deadline, "a replica kept the old version"
    done = time.monotonic()
    assert set(_predict_many(served.url, served.key, 30)) == {version}
    assert set(load.versions_since(done)) <= {version}


def test_promote_and_rollback_under_load_reach_every_replica_in_place(served: Served) -> None:
    before = _replicas()
    admin = {"Authorization": f"Bearer {served.key}"}
    v2 = served.v2
    with (
        Load(served.url, served.key) as load,
        httpx.Client(base_url=served.url, headers=admin, timeout=60) as c,
    ):
        time.sleep(1.0)  # answers before the move
        r = c.post(f"/v1/models/{v2}/promote")
        assert r.status_code == 200, r.text
        _moved_everywhere(served, load, v2)
        r = c.post("/v1/rollback")
        assert r.status_code == 200, r.text
        assert r.json() == {"from_version": v2, "to_version": 1}
        _moved_everywhere(served, load, 1)
        # From the command line: the alias moves, then the CLI sets the user_config.
        cli = subprocess.run(
            [FLYWHEEL, "promote", str(v2), "--project", str(served.root)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "replicas reconfigure to it in place" in cli.stderr, cli.stderr
        _moved_everywhere(served, load, v2)
    assert load.failed == []  # not one non-2xx answer or dropped connection
    assert {v for _, v in load.answers} == {1, v2}
    assert len(load.answers) >= 50
    assert _replicas() == before  # the same replicas, the same processes: no restart


def _named_serve_actors() -> list[str]:
    import ray

    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_")
    ]


def test_sigterm_stops_it_cleanly_and_leaves_nothing_on_the_cluster(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as c:
        r = c.post("/v1/predict", files={"file": ("d.png", digit_png(9), "image/png")})
        assert r.status_code == 200, r.text
        predicted = r.json()["prediction_id"]
    served.proc.send_signal(signal.SIGTERM)
    out, _ = served.proc.communicate(timeout=120)
    assert served.proc.returncode in (0, -signal.SIGTERM), out
    assert "Traceback" not in out, out
    assert "2 replicas on Ray Serve" in out, out
    assert out.index("ready on") < out.index("stopping:") < out.index("stopped:"), out
    project = Project.open(served.root)
    try:  # the replicas drained and committed their logs before they stopped
        with project.db.session() as s:
            assert s.get(Prediction, predicted) is not None
    finally:
        project.close()
    deadline = time.monotonic() + 30
    while _named_serve_actors():  # the controller, its proxies, the replicas: all gone
        assert time.monotonic() < deadline, _named_serve_actors()
        time.sleep(0.5)


def test_serving_on_ray_without_ray_address_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLYWHEEL_RAY_ADDRESS", raising=False)
    make_project(tmp_path / "p", train=False).close()
    r = CliRunner().invoke(cli_app, ["serve", "--on", "ray", "--project", str(tmp_path / "p")])
    assert r.exit_code != 0
    assert "--on ray` needs ray_address: 'local' for this machine" in str(r.exception or r.output)
