"""Architectures from outside the zoo: ``package.module:factory``, or an entry point.

A plugin architecture is named either

- ``package.module:factory``: ``factory`` is a function of no arguments that returns
  an ``ArchInfo`` (or is an ``ArchInfo``) in an importable module, or
- by the name of an entry point of the group ``flywheel.architectures`` that an
  installed distribution declares (``[project.entry-points."flywheel.architectures"]``
  ``tiny = "mypkg.nets:build"`` in its pyproject), pointing at such a factory.

Either way the declaration is held to the contract's form (``check_declaration``) and
marked with its origin: the plugin's name, and the distribution and version that bring
it, which the spec of every version trained with it records. Errors name the problem:
the module not found, the attribute missing, the factory failing, the clause broken.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
from typing import Any

from flywheel.errors import ConfigError, ContractError
from flywheel.models.contract import ArchInfo, check_declaration

__all__ = ["ENTRY_POINTS", "entry_point_names", "is_reference", "resolve"]

#: the entry-point group a distribution declares its architectures in
ENTRY_POINTS = "flywheel.architectures"

_REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_reference(name: str) -> bool:
    """``package.module:factory`` rather than a name."""
    return ":" in name


def entry_point_names() -> list[str]:
    """The architectures the installed distributions declare (not loaded)."""
    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINTS)})


def resolve(name: str) -> ArchInfo | None:
    """The plugin architecture ``name`` (checked and marked with its origin), or None
    when ``name`` is neither a ``module:factory`` reference nor an entry point."""
    if is_reference(name):
        if not _REFERENCE.match(name):
            raise ConfigError(
                f"architecture {name!r} is not a reference of the form 'package.module:factory'"
            )
        module_name, attr = name.split(":", 1)
        factory = _attribute(name, _module(name, module_name), attr)
        origin = {"plugin": name, **_distribution_of(module_name)}
        return check_declaration(name, _call(name, factory), origin)
    points = [ep for ep in metadata.entry_points(group=ENTRY_POINTS) if ep.name == name]
    if not points:
        return None
    ep = points[0]
    try:
        factory = ep.load()
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"architecture {name!r} (entry point {ep.value!r} of {_dist_label(ep)}): "
            f"module {exc.name!r} not found"
        ) from exc
    except Exception as exc:  # an attribute missing, the module failing on import
        raise ConfigError(
            f"architecture {name!r} (entry point {ep.value!r} of {_dist_label(ep)}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    origin = {"plugin": name, "entry_point": ep.value}
    if ep.dist is not None:
        origin |= {"distribution": ep.dist.name, "version": ep.dist.version}
    return check_declaration(name, _call(name, factory), origin)


def _module(name: str, module_name: str) -> Any:
    for _ in range(2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and not module_name.startswith(exc.name):
                raise ConfigError(
                    f"architecture {name!r}: importing module {module_name!r} failed: "
                    f"module {exc.name!r} (which it imports) not found"
                ) from exc
            # A package written after this process last looked at its folder: look again.
            importlib.invalidate_caches()
        except Exception as exc:
            raise ConfigError(
                f"architecture {name!r}: importing module {module_name!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    raise ConfigError(
        f"architecture {name!r}: module {module_name!r} not found (is its package "
        "installed, or on sys.path?)"
    )


def _attribute(name: str, module: Any, attr: str) -> Any:
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"architecture {name!r}: module {module.__name__!r} has no attribute {attr!r}"
            )
        obj = getattr(obj, part)
    return obj


def _call(name: str, factory: Any) -> object:
    """What the factory declares: an ``ArchInfo`` as it is, or a factory's result."""
    if isinstance(factory, ArchInfo):
        return factory
    if not callable(factory):
        raise ContractError(
            name,
            "returns an ArchInfo",
            f"{type(factory).__name__} is neither an ArchInfo nor a function returning one",
        )
    try:
        return factory()
    except Exception as exc:
        raise ContractError(
            name, "returns an ArchInfo", f"the factory raised {type(exc).__name__}: {exc}"
        ) from exc


def _distribution_of(module_name: str) -> dict[str, str]:
    """The installed distribution that holds ``module_name``'s top-level package, and
    its version (nothing for a module on sys.path outside any distribution)."""
    top = module_name.split(".")[0]
    names = metadata.packages_distributions().get(top) or []
    if not names:
        return {}
    try:
        return {"distribution": names[0], "version": metadata.version(names[0])}
    except metadata.PackageNotFoundError:
        return {"distribution": names[0]}


def _dist_label(ep: metadata.EntryPoint) -> str:
    return "an unknown distribution" if ep.dist is None else f"{ep.dist.name} {ep.dist.version}"
