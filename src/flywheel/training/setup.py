"""Setting a run up: its config from the project's settings, the model's spec for a
dataset version, and the sampling unit of each training row."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from flywheel.errors import ConfigError, ModelError
from flywheel.models import ModelSpec, arch_info, build_spec
from flywheel.settings import Settings
from flywheel.tasks import TASKS, Task
from flywheel.training.fit import TrainConfig

__all__ = ["model_spec", "sampling_units", "train_config"]


def train_config(settings: Settings, **overrides: Any) -> TrainConfig:
    """The training config the settings give, with ``overrides`` (None: not overridden);
    an architecture's own training defaults (``ArchInfo.training``) stand in for the
    settings a user did not set."""
    st = settings
    base = TrainConfig(
        arch=st.arch,
        epochs=st.epochs,
        batch_size=st.batch_size,
        learning_rate=st.learning_rate,
        weight_decay=st.weight_decay,
        dropout=st.dropout,
        patience=st.patience,
        val_fraction=st.val_fraction,
        seed=st.seed,
        warm_start=st.warm_start,
        lr_schedule=st.lr_schedule,
        augment=st.augment,
        refit=st.refit,
        image_size=st.image_size,
        finetune_layers=st.finetune_layers,
        dp_epsilon=st.dp_epsilon,
        dp_delta=st.dp_delta,
        dp_max_grad_norm=st.dp_max_grad_norm,
        workers=st.train_workers,
    )
    arch = overrides.get("arch") or st.arch or TASKS[st.task].default_arch
    try:
        tuned = arch_info(arch).training
    except ConfigError:
        tuned = {}  # an unknown name: refused, naming it, when the spec is made
    given = {k: v for k, v in overrides.items() if v is not None}
    unset = {k: v for k, v in tuned.items() if k not in st.model_fields_set and k not in given}
    try:
        return replace(base, **unset, **given)
    except ValueError as exc:  # TrainConfig's own checks: an option out of range
        raise ConfigError(f"invalid training option: {exc}") from exc


def model_spec(
    task: Task, preprocessing: dict[str, Any], labels: Sequence[str], config: TrainConfig
) -> ModelSpec:
    """The spec of the config's architecture for a dataset version (its native
    ``preprocessing`` and ``labels``); an architecture for another task is refused."""
    arch = config.arch or task.default_arch
    info = arch_info(arch)
    if info.modality != task.modality or info.objective != task.objective:
        raise ModelError(
            f"architecture {arch!r} reads {info.modality} for {info.objective}; this "
            f"project is {task.name} (default architecture {task.default_arch!r})"
        )
    native = dict(preprocessing)
    defaults = info.defaults(info.input_shape(info.preprocess(native, {})))
    overrides: dict[str, Any] = {}
    if "dropout" in defaults:
        overrides["dropout"] = config.dropout
    if "finetune_layers" in defaults:
        overrides["finetune_layers"] = config.finetune_layers
    if task.is_regression:
        overrides |= {"y_mean": native["target_mean"], "y_std": native["target_std"]}
    return build_spec(
        arch,
        task=task.name,
        native=native,
        labels=tuple(labels),
        options={"image_size": config.image_size},
        hparams=overrides,
    )


def sampling_units(rows: Sequence[tuple[Any, ...]]) -> np.ndarray:
    """The sampling unit of each row (input hash, label, value, ..., user): its user, or
    (no user) a unit of its own.

    A unit's number is a hash of the user's pseudonym (of the row's content when it
    has no user), not a position: leaving a user out moves no one else's rows to
    another unit, or across a private run's validation split.
    """
    out = np.empty(len(rows), np.int64)
    for i, row in enumerate(rows):
        user = row[-1]
        key = f"user:{user}" if user is not None else f"row:{row[0]}:{row[1]}:{row[2]}"
        out[i] = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
    return out
