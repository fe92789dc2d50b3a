"""Image classifiers of the seed: its Keras CNN (5.2) and its five-layer CNN for 32x32 (4.3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from flywheel.errors import ModelError
from flywheel.models.spec import ModelSpec
from flywheel.models.zoo import ArchInfo, register_arch

__all__ = ["CNN32", "SeedCNN", "check_input"]


def check_input(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return  # an exported graph checks shapes itself; a Python check would be baked in
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ModelError(
            f"{name} expects input of shape (N, {', '.join(map(str, shape))}); got {tuple(x.shape)}"
        )


class SeedCNN(nn.Module):
    """The seed's Keras CNN (section 5.2): conv 32 → pool → conv 64 → pool → dense 128 → classes.

    Softmax is left to the loss (cross-entropy on logits) and to prediction.
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
        check_input("seed_cnn", x, self.input_shape)
        return self.head(self.features(x))


class CNN32(nn.Module):
    """The seed's CNN for 32x32 images (section 4.3): conv 32, 64, 128 (3x3, same) → dense 1024."""

    def __init__(
        self, *, in_channels: int, height: int, width: int, n_classes: int, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, height, width)
        blocks: list[nn.Module] = []
        c = in_channels
        for out in (32, 64, 128):
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = out
        self.features = nn.Sequential(*blocks, nn.Flatten())
        n_flat = 128 * (height // 8) * (width // 8)
        if n_flat == 0:
            raise ModelError(f"input {height}x{width} is too small for cnn32 (needs at least 8x8)")
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(n_flat, 1024),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(1024, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("cnn32", x, self.input_shape)
        return self.head(self.features(x))


def _image_preprocess(size: int | None) -> Any:
    def preprocess(native: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        side = options.get("image_size") or size
        h, w = (side, side) if side else (native["height"], native["width"])
        return {"kind": "image", "mode": native["mode"], "height": int(h), "width": int(w)}

    return preprocess


def _image_shape(p: dict[str, Any]) -> tuple[int, ...]:
    return (1 if p["mode"] == "L" else 3, int(p["height"]), int(p["width"]))


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


def _build_cnn32(spec: ModelSpec) -> nn.Module:
    c, h, w = spec.input_shape
    return CNN32(
        in_channels=c,
        height=h,
        width=w,
        n_classes=len(spec.labels),
        dropout=float(spec.hparams.get("dropout", 0.25)),
    )


register_arch(
    ArchInfo(
        name="seed_cnn",
        modality="image",
        objective="classification",
        build=_build_seed_cnn,
        preprocess=_image_preprocess(64),
        input_shape=_image_shape,
        defaults=_seed_cnn_defaults,
        summary="the seed's Keras CNN (5.2), input resized to 64x64 by default",
    )
)
register_arch(
    ArchInfo(
        name="cnn32",
        modality="image",
        objective="classification",
        build=_build_cnn32,
        preprocess=_image_preprocess(32),
        input_shape=_image_shape,
        defaults=lambda _shape: {"dropout": 0.25},
        summary="the seed's CNN for 32x32 images (4.3): conv 32/64/128, dense 1024",
    )
)
