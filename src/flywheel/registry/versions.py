"""What the registry tells about a model version, and the names of its aliases."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel.registry.artifacts import Hashes

__all__ = ["CANDIDATE", "PRODUCTION", "VersionInfo"]

PRODUCTION = "production"
CANDIDATE = "candidate"


@dataclass(frozen=True)
class VersionInfo:
    version: int
    arch: str
    aliases: list[str]
    metrics: dict[str, Any]
    created_at: datetime
    parent: int | None
    dataset_version: int
    training_config: dict[str, Any]
    gate: dict[str, Any] | None
    #: the artifact folder: as stored (relative to the project) from a repo, absolute
    #: from a service (``resolved``)
    artifact_dir: str
    withdrawn: str | None = None  # why it is out of service (its weights are gone)
    weights_sha256: str = ""
    spec_sha256: str | None = None
    graph_sha256: str | None = None

    @property
    def hashes(self) -> Hashes:
        """What its files must hash to (an empty record is not checked)."""
        return Hashes(weights=self.weights_sha256 or None, spec=self.spec_sha256)

    def resolved(self, project_dir: Path) -> VersionInfo:
        """The same, with the artifact folder as a path in ``project_dir``."""
        folder = Path(self.artifact_dir)
        return replace(
            self, artifact_dir=str(folder if folder.is_absolute() else project_dir / folder)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "arch": self.arch,
            "aliases": self.aliases,
            "metrics": self.metrics,
            "created_at": self.created_at.isoformat(),
            "parent": self.parent,
            "dataset_version": self.dataset_version,
            "training_config": self.training_config,
            "gate": self.gate,
            "withdrawn": self.withdrawn,
        }
