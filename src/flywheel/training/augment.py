"""Augmentation on training batches: kornia for images, time shift and noise for audio."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["audio_augment", "image_augment", "make_augment"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def image_augment(
    *, degrees: float = 10.0, flip: bool = True, scale: tuple[float, float] = (0.9, 1.1)
) -> Augment:
    """Random rotation, horizontal flip and scale (the seed's 3.2), on whole batches."""
    import kornia.augmentation as K

    steps: list[Any] = [K.RandomAffine(degrees=degrees, scale=scale, p=0.5)]
    if flip:
        steps.insert(0, K.RandomHorizontalFlip(p=0.5))
    pipeline = K.AugmentationSequential(*steps)

    def apply(x: torch.Tensor, _gen: torch.Generator) -> torch.Tensor:
        # kornia draws from torch's global generator, which the fit loop seeds and checkpoints.
        with torch.no_grad():
            out: torch.Tensor = pipeline(x)
        return out

    return apply


def audio_augment(*, max_shift: float = 0.1, noise: float = 0.05) -> Augment:
    """Time shift (a roll of up to ``max_shift`` of the frames) and Gaussian noise on features."""

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        frames = x.shape[1]
        limit = max(1, int(frames * max_shift))
        shifts = torch.randint(-limit, limit + 1, (x.shape[0],), generator=gen)
        rolled = torch.stack(
            [torch.roll(row, int(s), dims=0) for row, s in zip(x, shifts, strict=True)]
        )
        return rolled + noise * torch.randn(rolled.shape, generator=gen)

    return apply


def make_augment(modality: str, options: dict[str, Any] | None = None) -> Augment | None:
    """The augmentation of a modality (None where it has none)."""
    options = options or {}
    if modality == "image":
        return image_augment(**options)
    if modality == "audio":
        return audio_augment(**options)
    return None
