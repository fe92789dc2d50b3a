"""The public surface is curated: a change to it is a decision, made here."""

from __future__ import annotations

import importlib
import pkgutil

import flywheel


def test_exported_members() -> None:
    assert set(flywheel.__all__) == {
        "AuthError",
        "ConfigError",
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


def test_lower_layers_do_not_import_upper_ones() -> None:
    """Data flows one way: serving → project → registry/store; training never imports serving."""
    import ast
    from pathlib import Path

    root = Path(flywheel.__file__).parent
    forbidden = {
        "data": ("flywheel.serving", "flywheel.project", "flywheel.training", "flywheel.registry"),
        "models": ("flywheel.serving", "flywheel.project", "flywheel.training"),
        "training": ("flywheel.serving", "flywheel.project", "flywheel.registry"),
        "evaluation": ("flywheel.serving", "flywheel.project"),
        "registry": ("flywheel.serving", "flywheel.project"),
        "store": ("flywheel.serving", "flywheel.project", "flywheel.registry"),
        "feedback": ("flywheel.serving", "flywheel.project"),
    }
    bad = []
    for pkg, banned in forbidden.items():
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                bad += [
                    f"{path.relative_to(root)} imports {n}" for n in names if n.startswith(banned)
                ]
    assert bad == []
