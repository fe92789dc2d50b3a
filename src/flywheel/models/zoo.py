"""Architectures by name: ``register_arch`` / ``create_model`` / ``arch_info``.

An architecture declares the modality it reads, whether it classifies or
regresses, how a dataset's native preprocessing becomes its own (an image size,
say), the input shape that follows, and its default hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from flywheel.errors import ConfigError, did_you_mean
from flywheel.models.spec import ModelSpec

__all__ = [
    "ArchInfo",
    "arch_info",
    "create_model",
    "default_hparams",
    "known_archs",
    "register_arch",
]

Params = dict[str, Any]


@dataclass(frozen=True)
class ArchInfo:
    name: str
    modality: str  # image, audio, text, tabular
    objective: str  # classification or regression
    build: Callable[[ModelSpec], nn.Module]
    #: (native preprocessing of the dataset, user options) → this model's preprocessing
    preprocess: Callable[[Params, Params], Params]
    #: the model's preprocessing → its input shape (without the batch axis)
    input_shape: Callable[[Params], tuple[int, ...]]
    #: the model's input shape → default hyper-parameters
    defaults: Callable[[tuple[int, ...]], Params]
    summary: str = ""
    #: checked against its ONNX export at every training (False: too large to export per run)
    onnx_check: bool = True
    #: training settings (``epochs``, ``patience``, ``weight_decay``, ``dropout``) this
    #: architecture is trained with where the user set none (toml, environment, option)
    training: Params = field(default_factory=dict)


#: filled by the architecture modules as ``flywheel.models`` imports them
_ARCHS: dict[str, ArchInfo] = {}


def register_arch(info: ArchInfo) -> ArchInfo:
    _ARCHS[info.name] = info
    return info


def known_archs() -> list[str]:
    return sorted(_ARCHS)


def arch_info(name: str) -> ArchInfo:
    if name not in _ARCHS:
        raise ConfigError(
            f"unknown architecture {name!r}{did_you_mean(name, known_archs(), list_all=False)} "
            f"(architectures: {', '.join(known_archs())})"
        )
    return _ARCHS[name]


def default_hparams(arch: str, input_shape: tuple[int, ...]) -> Params:
    return arch_info(arch).defaults(input_shape)


def create_model(spec: ModelSpec) -> nn.Module:
    return arch_info(spec.arch).build(spec)


def build_spec(
    arch: str,
    *,
    task: str,
    native: Params,
    labels: tuple[str, ...] | list[str],
    options: Params | None = None,
    hparams: Params | None = None,
) -> ModelSpec:
    """The spec of ``arch`` for a dataset: its preprocessing, input shape and hyper-parameters.

    ``native`` is the dataset's own preprocessing (e.g. image mode and size), ``options``
    the user's (e.g. ``image_size``); ``hparams`` override the architecture's defaults.
    """
    info = arch_info(arch)
    params = info.preprocess(native, options or {})
    shape = info.input_shape(params)
    return ModelSpec(
        arch=arch,
        task=task,
        input_shape=shape,
        labels=tuple(labels),
        hparams={**info.defaults(shape), **(hparams or {})},
        preprocessing=params,
    )
