"""The Ray tests: one real two-node Ray cluster for the whole session (1 CPU each, no
dashboard), inside the network namespace that ``tests/test_on_ray.py`` made for them.
Every test here reaches Ray through the setting ``ray_address`` (this cluster's)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.on_ray.cluster import LocalCluster, in_own_netns

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if not in_own_netns():
        pytest.skip("the Ray tests run in a network namespace of their own (tools/in-netns)")
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'flywheel-ml[ray]')")
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("ray")), cpus=(1, 1))
    cluster.start()
    os.environ["FLYWHEEL_RAY_ADDRESS"] = cluster.address  # for the CLI's subprocesses
    try:
        yield cluster
    finally:
        os.environ.pop("FLYWHEEL_RAY_ADDRESS", None)
        cluster.stop()
