"""Model artifacts: ``model.safetensors`` + ``spec.json``, hashed when written and
verified against those hashes whenever they are read. Never pickle."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file
from torch import nn

from flywheel.errors import ConfigError, ContractError, ModelError
from flywheel.models import ModelSpec, create_model

__all__ = ["SPEC", "WEIGHTS", "Hashes", "load_artifact", "read_verified", "save_artifact"]

WEIGHTS = "model.safetensors"
SPEC = "spec.json"


@dataclass(frozen=True)
class Hashes:
    """The SHA-256 of an artifact's files, as recorded at registration (None: not
    recorded, e.g. a version registered before spec hashes were kept)."""

    weights: str | None = None
    spec: str | None = None


def save_artifact(model: nn.Module, spec: ModelSpec, folder: Path) -> Hashes:
    """Write weights and spec into ``folder``; returns the SHA-256 of both files as
    written (read back from the disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"arch": spec.arch})
    os.replace(tmp, folder / WEIGHTS)
    (folder / SPEC).write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True))
    return Hashes(
        weights=hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest(),
        spec=hashlib.sha256((folder / SPEC).read_bytes()).hexdigest(),
    )


def read_verified(path: Path, sha256: str | None, what: str) -> bytes:
    """A file's bytes, refused unless they hash to ``sha256`` (None: not checked)."""
    where = f"{what} in {str(path.parent)!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{where} is incomplete: {path.name} is missing") from None
    except OSError as exc:
        raise ModelError(f"{where} cannot be read: {path.name}: {exc}") from exc
    if sha256:
        found = hashlib.sha256(data).hexdigest()
        if found != sha256:
            raise ModelError(
                f"{where}: {path.name} does not match the SHA-256 recorded when it was "
                f"registered (expected {sha256[:12]}…, found {found[:12]}…): the file was "
                "changed or damaged, and is not loaded"
            )
    return data


def load_artifact(
    folder: Path, hashes: Hashes | None = None, *, what: str = "model artifact"
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model from its spec and load its safetensors weights, each file first
    verified against ``hashes``."""
    hashes = hashes or Hashes()
    spec_bytes = read_verified(folder / SPEC, hashes.spec, what)
    weights = read_verified(folder / WEIGHTS, hashes.weights, what)
    try:
        spec = ModelSpec.from_json(json.loads(spec_bytes))
        model = create_model(spec)
        model.load_state_dict(load_tensors(weights), strict=True)
    except (SafetensorError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{what} in {str(folder)!r} cannot be loaded: {exc}") from exc
    except (ConfigError, ContractError) as exc:  # a plugin's architecture missing or broken
        raise ModelError(f"{what} in {str(folder)!r} cannot be loaded: {exc}") from exc
    model.eval()
    return model, spec
