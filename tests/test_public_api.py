"""The public surface is curated: a change to it is a decision, made here."""

from __future__ import annotations

import importlib
import pkgutil

import flywheel


def test_exported_members() -> None:
    assert set(flywheel.__all__) == {
        "AsyncClient",
        "AuthError",
        "Client",
        "ConfigError",
        "ConflictError",
        "DataError",
        "FlywheelError",
        "InputError",
        "ModelError",
        "NotFittedError",
        "NotFoundError",
        "Project",
        "ProjectError",
        "RegistryError",
        "Settings",
        "__version__",
    }
    for name in flywheel.__all__:
        assert hasattr(flywheel, name)


def test_every_module_declares_all() -> None:
    missing = []
    for info in pkgutil.walk_packages(flywheel.__path__, "flywheel."):
        if ".migrations" in info.name:
            continue
        module = importlib.import_module(info.name)
        if not hasattr(module, "__all__"):
            missing.append(info.name)
    assert missing == []


def test_errors_share_one_root() -> None:
    for name in flywheel.__all__:
        obj = getattr(flywheel, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, flywheel.FlywheelError)
