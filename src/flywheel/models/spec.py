"""``ModelSpec``: the JSON that, with a safetensors file, rebuilds any model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["IMPORTED_ARCH", "SPEC_FORMAT", "ModelSpec"]

SPEC_FORMAT = 1
#: the ``arch`` of a version imported as an ONNX graph (``flywheel import-model``): no
#: architecture builds it, no torch weights come with it
IMPORTED_ARCH = "onnx"


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    task: str
    input_shape: tuple[int, ...]  # (C, H, W) for images
    labels: tuple[str, ...]
    hparams: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: a plugin architecture's origin: its name, and the distribution and version that
    #: brought it (None: the zoo's); loading refuses, naming them, where it is missing
    plugin: dict[str, str] | None = None

    @property
    def imported(self) -> bool:
        """An imported ONNX graph: it has no torch weights."""
        return self.arch == IMPORTED_ARCH

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["labels"] = list(self.labels)
        d["format"] = SPEC_FORMAT
        if self.plugin is None:
            del d["plugin"]  # the zoo's specs read as they always have
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelSpec:
        fmt = d.get("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise ValueError(f"model spec format {fmt} is not supported (expected {SPEC_FORMAT})")
        return cls(
            arch=str(d["arch"]),
            task=str(d["task"]),
            input_shape=tuple(int(v) for v in d["input_shape"]),
            labels=tuple(str(v) for v in d["labels"]),
            hparams=dict(d.get("hparams", {})),
            preprocessing=dict(d.get("preprocessing", {})),
            plugin=None if d.get("plugin") is None else {k: str(v) for k, v in d["plugin"].items()},
        )
