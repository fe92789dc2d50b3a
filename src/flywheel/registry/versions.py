"""What the registry tells about a model version, and the names of its aliases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    artifact_dir: str
    withdrawn: str | None = None  # why it is out of service (its weights are gone)

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
