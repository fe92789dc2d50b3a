"""``ModelSpec``: the JSON that, with a safetensors file, rebuilds any model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SPEC_FORMAT", "ModelSpec"]

SPEC_FORMAT = 1


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    task: str
    input_shape: tuple[int, ...]  # (C, H, W) for images
    labels: tuple[str, ...]
    hparams: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["labels"] = list(self.labels)
        d["format"] = SPEC_FORMAT
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
        )
