"""Where base data comes from: the built-in ``digits`` set and image class folders."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from flywheel.data.images import encode_png
from flywheel.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "DigitsSource",
    "ImageFolderSource",
    "ListSource",
    "RawExample",
    "Source",
    "digits_arrays",
    "resolve_source",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class RawExample:
    """One labelled input as it comes from a source (encoded bytes, not yet decoded)."""

    content: bytes
    label: str
    user_id: str | None = None
    split: str | None = None  # None: the dataset assigns one
    source_path: str | None = None


class Source(Protocol):
    name: str

    def __iter__(self) -> Iterator[RawExample]: ...


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as uint8 images (0-255) and integer labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


class DigitsSource:
    """scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes)."""

    name = "digits"

    def __init__(self, indices: Sequence[int] | None = None) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[RawExample]:
        images, labels = digits_arrays()
        idx = range(len(labels)) if self.indices is None else self.indices
        for i in idx:
            yield RawExample(encode_png(images[i]), str(labels[i]), source_path=f"digits[{i}]")


class ImageFolderSource:
    """``<root>/<class>/*.png|jpg|jpeg``: one subfolder per class, as Keras reads it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.name = str(self.root)
        if not self.root.is_dir():
            raise DataError(
                f"data folder {str(self.root)!r} does not exist or is not a folder", path=self.root
            )
        self.classes = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if len(self.classes) < 2:
            raise DataError(
                f"data folder {str(self.root)!r} must hold one subfolder per class "
                f"(at least 2); found {len(self.classes)}: {self.classes}",
                path=self.root,
            )
        self.files = [
            (f, c)
            for c in self.classes
            for f in sorted((self.root / c).iterdir())
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.files:
            raise DataError(
                f"data folder {str(self.root)!r} has class folders but no "
                f"{'/'.join(IMAGE_SUFFIXES)} files in them",
                path=self.root,
            )

    def __iter__(self) -> Iterator[RawExample]:
        for f, c in self.files:
            yield RawExample(f.read_bytes(), c, source_path=str(f.relative_to(self.root)))


class ListSource:
    """Examples already in memory (used by the demo and by tests)."""

    def __init__(self, name: str, examples: Sequence[RawExample]) -> None:
        self.name = name
        self.examples = examples

    def __iter__(self) -> Iterator[RawExample]:
        return iter(self.examples)


def resolve_source(spec: str) -> Source:
    """``digits`` or a path to image class folders."""
    if spec == "digits":
        return DigitsSource()
    return ImageFolderSource(spec)
