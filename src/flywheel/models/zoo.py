"""Architectures by name: ``register_arch`` / ``create_model`` / ``arch_info``.

An architecture declares the modality it reads, whether it classifies or regresses,
how a dataset's native preprocessing becomes its own (an image size, say), the input
shape that follows, and its default hyper-parameters (an ``ArchInfo``). The zoo's
register themselves here; a plugin's are found by name when first asked for
(``package.module:factory``, or an entry point of ``flywheel.architectures``: see
``flywheel.models.plugins``).
"""

from __future__ import annotations

import logging

from torch import nn

from flywheel.errors import ConfigError, ContractError, did_you_mean
from flywheel.models import plugins
from flywheel.models.contract import ArchInfo, Params
from flywheel.models.spec import IMPORTED_ARCH, ModelSpec

__all__ = [
    "ArchInfo",
    "arch_info",
    "create_model",
    "default_hparams",
    "known_archs",
    "register_arch",
]

log = logging.getLogger("flywheel.models")

#: filled by the architecture modules as ``flywheel.models`` imports them
_ARCHS: dict[str, ArchInfo] = {}
#: plugin architectures, resolved (imported and checked) on first use
_PLUGINS: dict[str, ArchInfo] = {}


def register_arch(info: ArchInfo) -> ArchInfo:
    _ARCHS[info.name] = info
    return info


def known_archs() -> list[str]:
    """The zoo's architectures and those the installed plugins declare by entry point."""
    return sorted({*_ARCHS, *plugins.entry_point_names()} - {IMPORTED_ARCH})


def arch_info(name: str) -> ArchInfo:
    if name in _ARCHS:
        return _ARCHS[name]
    if name == IMPORTED_ARCH:
        raise ConfigError(
            f"{IMPORTED_ARCH!r} marks an imported ONNX model, not an architecture: it has no "
            "torch weights to build or train; choose an architecture of the zoo or a plugin "
            f"({', '.join(known_archs())})"
        )
    if name not in _PLUGINS:
        found = plugins.resolve(name)
        if found is None:
            raise ConfigError(
                f"unknown architecture {name!r}"
                f"{did_you_mean(name, known_archs(), list_all=False)} "
                f"(architectures: {', '.join(known_archs())}; or a plugin's: "
                f"'package.module:factory', or an entry point of {plugins.ENTRY_POINTS!r})"
            )
        _PLUGINS[name] = found
    return _PLUGINS[name]


def default_hparams(arch: str, input_shape: tuple[int, ...]) -> Params:
    return arch_info(arch).defaults(input_shape)


def create_model(spec: ModelSpec) -> nn.Module:
    """The model of ``spec``, untrained. A version trained with a plugin's architecture
    needs that plugin installed: it is refused, naming the distribution, without it."""
    try:
        info = arch_info(spec.arch)
    except ConfigError as exc:
        if not spec.plugin:
            raise
        dist, version = spec.plugin.get("distribution"), spec.plugin.get("version")
        if dist:
            pin = f"{dist}=={version}" if version else dist
            needs = f"the distribution {dist!r} {version or ''}".rstrip()
            how = f"install it (pip install '{pin}') to load this model"
        else:
            needs, how = "its module on sys.path", str(exc)
        raise ConfigError(
            f"this model was trained with the plugin architecture {spec.arch!r}, which needs "
            f"{needs}: it is not installed here; {how}"
        ) from exc
    recorded, installed = (spec.plugin or {}).get("version"), info.origin.get("version")
    if recorded and installed and recorded != installed:
        log.warning(
            "architecture %r: this model was trained with version %s of its plugin; %s is "
            "installed (its weights load only if the architecture is unchanged)",
            spec.arch, recorded, installed,
        )  # fmt: skip
    model = info.build(spec)
    if not isinstance(model, nn.Module):
        raise ContractError(
            spec.arch, "build", f"build(spec) returned {type(model).__name__}, not an nn.Module"
        )
    return model


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
    A plugin's architecture is recorded with its origin (name, distribution, version).
    """
    info = arch_info(arch)
    params = info.preprocess(native, options or {})
    shape = tuple(info.input_shape(params))
    return ModelSpec(
        arch=arch,
        task=task,
        input_shape=shape,
        labels=tuple(labels),
        hparams={**info.defaults(shape), **(hparams or {})},
        preprocessing=params,
        plugin=dict(info.origin) or None,
    )
