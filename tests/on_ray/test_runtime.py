"""flywheel reaches the session's real two-node cluster through ``ray_address``."""

from __future__ import annotations

import pytest

from flywheel.errors import ConfigError
from flywheel.scale.runtime import cluster_resources, ray_session
from flywheel.settings import Settings
from tests.on_ray.cluster import LocalCluster


def test_ray_address_joins_the_cluster(ray_cluster: LocalCluster, tmp_path) -> None:
    st = Settings(project_dir=tmp_path, ray_address=ray_cluster.address)
    ray = ray_session(st)
    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2
    assert cluster_resources(st)["CPU"] == 2.0


def test_without_ray_address_nothing_reaches_ray(tmp_path) -> None:
    with pytest.raises(ConfigError, match="set ray_address"):
        ray_session(Settings(project_dir=tmp_path, ray_address=None))
