"""Training checkpoints as safetensors + JSON, so an interrupted run can resume. Never pickle."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from flywheel.errors import FlywheelError, ModelError
from flywheel.store.storage import LocalStorage, Storage

__all__ = ["Checkpoint", "CheckpointSlot", "load_checkpoint", "save_checkpoint"]

TENSORS = "state.safetensors"
META = "state.json"
#: the key of the JSON that records the tensors' SHA-256
TENSORS_SHA256 = "tensors_sha256"


@dataclass
class Checkpoint:
    """Everything needed to continue a fit after ``epoch``."""

    epoch: int
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: torch.Tensor  # the fit loop's generator (batch order, augmentation)
    global_rng: torch.Tensor  # torch's global generator (dropout, weight init)
    meta: dict[str, Any]  # best epoch/loss/metric, patience counter, history, run identity


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, names in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(names)
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass(frozen=True)
class CheckpointSlot:
    """Where a run's checkpoint lives: a folder (``key``) of a storage, the project
    folder's ``checkpoints/current`` by default, so that any machine of a
    ``storage_url`` can resume the run."""

    storage: Storage
    key: str

    @classmethod
    def at(cls, folder: Path | CheckpointSlot) -> CheckpointSlot:
        if isinstance(folder, CheckpointSlot):
            return folder
        return cls(LocalStorage(folder.parent), folder.name)

    def __str__(self) -> str:
        return self.storage.where(self.key)

    def exists(self) -> bool:
        """A checkpoint is there (its JSON, written last, is)."""
        here = self.storage.local_path(self.key)
        if here is not None:
            return here.exists()
        return self.storage.exists(f"{self.key}/{META}")

    def clear(self) -> None:
        """The checkpoint gone (nothing there is not an error)."""
        self.storage.delete_tree(self.key)


def save_checkpoint(folder: Path | CheckpointSlot, ck: Checkpoint) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint whole (a
    folder is swapped whole; on an object store the JSON, written last, records the
    tensors' SHA-256, and a checkpoint whose tensors do not match it is refused)."""
    slot = CheckpointSlot.at(folder)
    opt_tensors, opt_meta = _flatten_optimizer(ck.optimizer)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in ck.model.items()}
    tensors |= {f"best.{k}": v.detach().contiguous() for k, v in ck.best_model.items()}
    tensors |= opt_tensors
    tensors["rng.torch"] = ck.rng
    tensors["rng.global"] = ck.global_rng
    data = save(tensors)
    meta = {
        "epoch": ck.epoch,
        "optimizer": opt_meta,
        "scheduler": ck.scheduler,
        **ck.meta,
        TENSORS_SHA256: hashlib.sha256(data).hexdigest(),
    }
    slot.storage.replace_tree(slot.key, {TENSORS: data, META: json.dumps(meta).encode()})


def load_checkpoint(folder: Path | CheckpointSlot) -> Checkpoint:
    slot = CheckpointSlot.at(folder)
    try:
        data = slot.storage.get(f"{slot.key}/{TENSORS}")
        meta = json.loads(slot.storage.get(f"{slot.key}/{META}"))
        digest = meta.pop(TENSORS_SHA256, None)
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"{TENSORS} is not the one {META} was written with (a torn write)")
        tensors = load(data)
    except (FlywheelError, OSError, ValueError, SafetensorError) as exc:
        raise ModelError(f"checkpoint in {str(slot)!r} cannot be read: {exc}") from exc
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    epoch = int(meta.pop("epoch"))
    optimizer = _unflatten_optimizer(tensors, meta.pop("optimizer"))
    scheduler = meta.pop("scheduler")
    return Checkpoint(
        epoch, model, best, optimizer, scheduler, tensors["rng.torch"], tensors["rng.global"], meta
    )
