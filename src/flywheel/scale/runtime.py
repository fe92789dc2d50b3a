"""Connecting to Ray as the settings say: ``ray_address`` unset means no Ray at all;
``local`` starts an in-process Ray on this machine; ``auto``, ``ray://host:port`` or
``host:port`` join an existing cluster. The database stays the record of everything;
Ray holds only runtime state."""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import Any

from flywheel.errors import ConfigError
from flywheel.settings import Settings

__all__ = ["cluster_resources", "import_ray", "ray_session"]

_lock = threading.Lock()

INSTALL = "pip install 'flywheel-ml[ray]'"


def import_ray() -> ModuleType:
    """Ray itself, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - the dev extra brings Ray
        raise ConfigError(f"Ray is not installed ({exc}): {INSTALL}") from exc
    return ray


def ray_session(settings: Settings) -> ModuleType:
    """Ray, connected as ``settings.ray_address`` says (once per process; a process
    already connected keeps its connection). Raises ConfigError when Ray is not asked
    for, not installed, or the cluster cannot be reached."""
    if settings.ray_address is None:
        raise ConfigError(
            "this needs Ray: set ray_address ('local' for this machine, 'auto' or "
            "'ray://host:10001' for a cluster)"
        )
    ray = import_ray()
    with _lock:
        if ray.is_initialized():
            return ray
        # Ray's own usage reporting stays off: flywheel is self-hosted.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray's coming default (it no longer rewrites CUDA_VISIBLE_DEVICES for tasks that
        # ask for no GPU), taken now: it warns otherwise.
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if settings.ray_address == "local":
            kwargs["num_cpus"] = settings.ray_num_cpus
        else:
            kwargs["address"] = settings.ray_address
            kwargs.pop("include_dashboard")
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"Ray at {settings.ray_address!r} could not be reached or started: {exc}"
            ) from exc
    return ray


def cluster_resources(settings: Settings) -> dict[str, float]:
    """What the cluster has (CPUs, GPUs, memory), as Ray counts it."""
    ray = ray_session(settings)
    return {k: float(v) for k, v in ray.cluster_resources().items() if "node:" not in k}
