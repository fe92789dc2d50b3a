"""Registry: model versions, aliases (production, candidate), artifacts."""

from flywheel.registry.artifacts import SPEC, WEIGHTS, load_artifact, save_artifact
from flywheel.registry.registry import (
    CANDIDATE,
    PRODUCTION,
    VersionInfo,
    aliases_of,
    clear_alias,
    get_alias,
    get_version,
    list_versions,
    promote,
    rollback,
    set_alias,
)

__all__ = [
    "CANDIDATE",
    "PRODUCTION",
    "SPEC",
    "WEIGHTS",
    "VersionInfo",
    "aliases_of",
    "clear_alias",
    "get_alias",
    "get_version",
    "list_versions",
    "load_artifact",
    "promote",
    "rollback",
    "save_artifact",
    "set_alias",
]
