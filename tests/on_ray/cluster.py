"""A real multi-node Ray cluster on this machine, for the tests and the checks.

The head is ``ray start --head`` and every other node joins it with ``ray start
--address``, each with its own temp dir and CPU count. Each node runs with ``--block``
in a process group of its own, so that stopping the cluster stops its processes alone
(``ray stop`` would stop every Ray on the machine). Run it inside a network namespace
with only loopback (``tools/in-netns``): there Ray binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LocalCluster", "in_own_netns", "local_cluster"]


def in_own_netns() -> bool:
    """Is loopback the only network interface here (a namespace of our own)?"""
    names = {name for _, name in socket.if_nameindex()}
    return names <= {"lo"}


def _ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


class LocalCluster:
    def __init__(
        self,
        root: Path,
        cpus: tuple[int, ...] = (1, 1),
        port: int = 6379,
        object_store_bytes: int = 300 * 2**20,
    ) -> None:
        self.root, self.cpus, self.port = root, cpus, port
        self.object_store_bytes = object_store_bytes
        self.address = f"127.0.0.1:{port}"
        self._nodes: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, args: list[str]) -> None:
        tmp = self.root / name
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [_ray_cli(), "start", "--block", "--disable-usage-stats", *args]
        cmd += ["--node-ip-address", "127.0.0.1", "--temp-dir", str(tmp)]
        cmd += ["--object-store-memory", str(self.object_store_bytes)]
        with (self.root / f"{name}.log").open("wb") as log:  # the node keeps its own copy
            self._nodes.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
            )  # fmt: skip

    def _wait(self, what: str, ready: object, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():  # type: ignore[operator]
            dead = [p.args for p in self._nodes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                    for p in sorted(self.root.glob("*.log"))
                )
                raise RuntimeError(f"the Ray cluster did not come up ({what}): {dead}\n{logs}")
            time.sleep(0.2)

    def _gcs_up(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self) -> LocalCluster:
        head, *others = self.cpus
        self._start("head", ["--head", "--port", str(self.port), "--num-cpus", str(head),
                             "--include-dashboard=false"])  # fmt: skip
        self._wait("head", self._gcs_up)
        for i, n in enumerate(others, 1):
            self._start(f"node{i}", ["--address", self.address, "--num-cpus", str(n)])
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        self._wait(
            f"{len(self.cpus)} nodes",
            lambda: sum(1 for n in ray.nodes() if n["Alive"]) >= len(self.cpus),
        )
        return self

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(self._nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self._nodes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self._nodes.clear()


@contextlib.contextmanager
def local_cluster(root: Path, cpus: tuple[int, ...] = (1, 1)) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root, cpus)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
