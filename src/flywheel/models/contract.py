"""What an architecture declares (``ArchInfo``), and the check of a declaration.

Every architecture, the zoo's and a plugin's alike, is one ``ArchInfo``: the modality
it reads, whether it classifies or regresses, how a dataset's native preprocessing
becomes its own (an image size, say), the input shape that follows, its default
hyper-parameters and, optionally, its own training defaults. ``check_declaration``
holds a plugin's declaration to that form and names the clause it breaks; what the
declared functions then do (shapes, seeding, saving, ONNX) is checked by
``flywheel.testing``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from flywheel.errors import ContractError
from flywheel.models.spec import ModelSpec
from flywheel.tasks import TASKS

__all__ = ["MODALITIES", "OBJECTIVES", "TRAINING_KEYS", "ArchInfo", "check_declaration"]

Params = dict[str, Any]

MODALITIES = tuple(sorted({t.modality for t in TASKS.values()}))
OBJECTIVES = ("classification", "regression")
#: the training settings an architecture may bring as its own defaults
TRAINING_KEYS = ("epochs", "patience", "weight_decay", "dropout", "learning_rate", "batch_size")


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
    #: where a plugin's architecture comes from (``plugin``: its name, ``distribution``
    #: and ``version``: the installed package that brings it); empty for the zoo's.
    #: Recorded in the spec of every version trained with it.
    origin: dict[str, str] = field(default_factory=dict)


_CALLABLES = ("build", "preprocess", "input_shape", "defaults")


def check_declaration(name: str, declared: object, origin: dict[str, str]) -> ArchInfo:
    """``declared`` (what a plugin's factory returned) as the architecture ``name``:
    an ``ArchInfo`` whose fields have the contract's form, renamed to ``name`` and marked
    with its ``origin``; a ``ContractError`` naming the first clause it breaks."""
    if not isinstance(declared, ArchInfo):
        raise ContractError(
            name,
            "returns an ArchInfo",
            f"the factory returned {type(declared).__name__}, not a flywheel.models.ArchInfo",
        )
    if declared.modality not in MODALITIES:
        raise ContractError(
            name,
            "modality",
            f"modality {declared.modality!r} is not one of {', '.join(MODALITIES)}",
        )
    if declared.objective not in OBJECTIVES:
        raise ContractError(
            name,
            "objective",
            f"objective {declared.objective!r} is not one of {', '.join(OBJECTIVES)}",
        )
    for attr in _CALLABLES:
        value = getattr(declared, attr)
        if not callable(value):
            raise ContractError(
                name, attr, f"ArchInfo.{attr} must be a function; got {type(value).__name__}"
            )
    training = declared.training
    unknown = sorted(set(training) - set(TRAINING_KEYS)) if isinstance(training, dict) else None
    if unknown is None or unknown:
        raise ContractError(
            name,
            "training",
            f"ArchInfo.training is a dict of {', '.join(TRAINING_KEYS)}; got "
            f"{unknown if unknown else type(training).__name__}",
        )
    return replace(declared, name=name, origin=dict(origin))
