"""Model artifacts: ``model.safetensors`` + ``spec.json``. Never pickle."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from flywheel.errors import ModelError
from flywheel.models import ModelSpec, create_model

__all__ = ["SPEC", "WEIGHTS", "load_artifact", "save_artifact"]

WEIGHTS = "model.safetensors"
SPEC = "spec.json"


def save_artifact(model: nn.Module, spec: ModelSpec, folder: Path) -> str:
    """Write weights and spec into ``folder``; returns the weights' SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"arch": spec.arch})
    os.replace(tmp, folder / WEIGHTS)
    (folder / SPEC).write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True))
    return hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()


def load_artifact(folder: Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model from its spec and load its safetensors weights."""
    try:
        spec = ModelSpec.from_json(json.loads((folder / SPEC).read_text()))
        model = create_model(spec)
        state = load_file(str(folder / WEIGHTS))
        model.load_state_dict(state, strict=True)
    except FileNotFoundError as exc:
        raise ModelError(f"model artifact in {str(folder)!r} is incomplete: {exc}") from exc
    except (SafetensorError, RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(f"model artifact in {str(folder)!r} cannot be loaded: {exc}") from exc
    model.eval()
    return model, spec
