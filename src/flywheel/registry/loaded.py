"""A model version held in memory, with what it needs to read raw inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from flywheel.data import Arrays, Codec
from flywheel.evaluation.scoring import score
from flywheel.models import ModelSpec
from flywheel.outputs import softmax
from flywheel.registry.artifacts import Hashes, load_artifact
from flywheel.training import predict_outputs

__all__ = ["LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    """A model version held in memory, with what it needs to read raw inputs."""

    version: int
    model: nn.Module
    spec: ModelSpec
    codec: Codec

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def is_regression(self) -> bool:
        return not self.spec.labels

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (classification) or values (regression) for a batch."""
        out = predict_outputs(self.model, x)
        if self.is_regression or out.size == 0:
            return out
        return softmax(out)

    def decode(self, content: bytes) -> np.ndarray:
        return self.codec.decode(content, self.spec.preprocessing)

    def score(self, data: Arrays) -> tuple[dict[str, Any], np.ndarray]:
        """(report, per-row score) on labelled rows: right or wrong per row (classes),
        squared error per row (regression)."""
        return score(self.outputs(data.x), data.y, self.labels)


def load_model(
    version: int, artifact_dir: str | Path, codec: Codec, hashes: Hashes | None = None
) -> LoadedModel:
    """Load a version's artifact (safetensors + spec), each file verified against the
    ``hashes`` recorded at registration, and warm its codec up."""
    model, spec = load_artifact(Path(artifact_dir), hashes, what=f"model v{version}")
    codec.warm_up(spec.preprocessing)
    return LoadedModel(version, model, spec, codec)
