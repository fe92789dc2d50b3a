"""Architectures by name: ``register_arch`` / ``create_model``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flywheel.errors import ModelError
from flywheel.models.spec import ModelSpec

__all__ = ["SeedCNN", "create_model", "default_hparams", "known_archs", "register_arch"]

Builder = Callable[[ModelSpec], nn.Module]
_ARCHS: dict[str, Builder] = {}
_DEFAULTS: dict[str, Callable[[tuple[int, ...]], dict[str, Any]]] = {}


def register_arch(
    name: str, defaults: Callable[[tuple[int, ...]], dict[str, Any]]
) -> Callable[[Builder], Builder]:
    def deco(builder: Builder) -> Builder:
        _ARCHS[name] = builder
        _DEFAULTS[name] = defaults
        return builder

    return deco


def known_archs() -> list[str]:
    return sorted(_ARCHS)


def _check_arch(name: str) -> None:
    if name not in _ARCHS:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(known_archs())}")


def default_hparams(arch: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    _check_arch(arch)
    return _DEFAULTS[arch](input_shape)


def create_model(spec: ModelSpec) -> nn.Module:
    _check_arch(spec.arch)
    return _ARCHS[spec.arch](spec)


class SeedCNN(nn.Module):
    """The seed's Keras CNN (section 5.2): conv 32 → pool → conv 64 → pool → dense 128 → classes.

    Softmax is left to the loss (cross-entropy on logits) and to ``predict_proba``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        height: int,
        width: int,
        n_classes: int,
        conv: tuple[int, int] = (32, 64),
        dense: int = 128,
        dropout: float = 0.25,
        padding: str = "same",
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, height, width)
        pad = 1 if padding == "same" else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, conv[0], 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(conv[0], conv[1], 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        try:
            with torch.no_grad():
                n_flat = self.features(torch.zeros(1, in_channels, height, width)).shape[1]
        except RuntimeError:  # torch: "output size is too small" / "kernel size can't be greater"
            n_flat = 0
        if n_flat == 0:
            raise ModelError(
                f"input {height}x{width} is too small for seed_cnn with padding={padding!r}"
            )
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(n_flat, dense),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dense, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ModelError(
                f"seed_cnn expects input of shape (N, {', '.join(map(str, self.input_shape))}); "
                f"got {tuple(x.shape)}"
            )
        return self.head(self.features(x))


def _seed_cnn_defaults(input_shape: tuple[int, ...]) -> dict[str, Any]:
    # Keras' default "valid" padding needs room: 3x3 convs and two 2x2 pools
    # leave nothing of an 8x8 digit, so small inputs keep their size with "same".
    small = min(input_shape[1:]) < 16
    return {
        "conv": [32, 64],
        "dense": 128,
        "dropout": 0.25,
        "padding": "same" if small else "valid",
    }


@register_arch("seed_cnn", _seed_cnn_defaults)
def _build_seed_cnn(spec: ModelSpec) -> nn.Module:
    c, h, w = spec.input_shape
    hp = spec.hparams
    c1, c2 = (int(v) for v in hp.get("conv", (32, 64)))
    return SeedCNN(
        in_channels=c,
        height=h,
        width=w,
        n_classes=len(spec.labels),
        conv=(c1, c2),
        dense=int(hp.get("dense", 128)),
        dropout=float(hp.get("dropout", 0.25)),
        padding=str(hp.get("padding", "same")),
    )
