"""Training checkpoints as safetensors + JSON, so an interrupted run can resume. Never pickle."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flywheel.errors import ModelError

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

TENSORS = "state.safetensors"
META = "state.json"


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


def save_checkpoint(folder: Path, ck: Checkpoint) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint whole."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_meta = _flatten_optimizer(ck.optimizer)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in ck.model.items()}
    tensors |= {f"best.{k}": v.detach().contiguous() for k, v in ck.best_model.items()}
    tensors |= opt_tensors
    tensors["rng.torch"] = ck.rng
    tensors["rng.global"] = ck.global_rng
    save_file(tensors, str(tmp / TENSORS))
    meta = {"epoch": ck.epoch, "optimizer": opt_meta, "scheduler": ck.scheduler, **ck.meta}
    (tmp / META).write_text(json.dumps(meta))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path) -> Checkpoint:
    try:
        tensors = load_file(str(folder / TENSORS))
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"checkpoint in {str(folder)!r} cannot be read: {exc}") from exc
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    epoch = int(meta.pop("epoch"))
    optimizer = _unflatten_optimizer(tensors, meta.pop("optimizer"))
    scheduler = meta.pop("scheduler")
    return Checkpoint(
        epoch, model, best, optimizer, scheduler, tensors["rng.torch"], tensors["rng.global"], meta
    )
