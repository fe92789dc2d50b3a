"""A model version held in memory, with what it needs to read raw inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from flywheel.data import Arrays, Codec
from flywheel.errors import FlywheelError
from flywheel.evaluation.scoring import score
from flywheel.models import IMPORTED_ARCH, ModelSpec
from flywheel.outputs import softmax
from flywheel.registry.artifacts import SPEC, ArtifactFolder, Hashes, load_artifact
from flywheel.registry.imported import OnnxGraph, load_imported
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

    @property
    def imported(self) -> bool:
        """An imported ONNX graph (``model`` runs it; it has no torch weights)."""
        return isinstance(self.model, OnnxGraph)

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (classification) or values (regression) for a batch."""
        if isinstance(self.model, OnnxGraph):
            return self.model.outputs(x)
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
    version: int,
    artifact_dir: str | Path | ArtifactFolder,
    codec: Codec,
    hashes: Hashes | None = None,
) -> LoadedModel:
    """Load a version's artifact (safetensors + spec, or an imported ONNX graph + spec),
    each file verified against the ``hashes`` recorded at registration, and warm its
    codec up. ``artifact_dir``: a folder here, or a folder of the project's storage."""
    folder, what = ArtifactFolder.at(artifact_dir), f"model v{version}"
    model: nn.Module
    if _is_imported(folder, (hashes or Hashes()).spec):
        model, spec = load_imported(folder, hashes or Hashes(), what=what)
    else:
        model, spec = load_artifact(folder, hashes, what=what)
    codec.warm_up(spec.preprocessing)
    return LoadedModel(version, model, spec, codec)


def _is_imported(folder: ArtifactFolder, sha256: str | None) -> bool:
    """The spec names the imported graph's arch (read only to choose the loader, which
    says what is wrong with a spec that does not verify; by its hash, a remote one comes
    from this machine's cache)."""
    try:
        return bool(json.loads(folder.read(SPEC, sha256, "spec")).get("arch") == IMPORTED_ARCH)
    except (FlywheelError, OSError, ValueError, AttributeError):
        return False  # the artifact loader says what is wrong with it
