"""Where base data comes from: the built-in ``digits`` set and image class folders."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from flywheel.data.codecs import tabular_bytes
from flywheel.data.images import encode_png
from flywheel.errors import DataError

__all__ = [
    "AUDIO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "CsvManifestSource",
    "DiabetesSource",
    "DigitsSource",
    "ImageFolderSource",
    "ListSource",
    "RawExample",
    "Source",
    "TabularCsvSource",
    "csv_column",
    "digits_arrays",
    "read_csv",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
AUDIO_SUFFIXES = (".wav",)


@dataclass(frozen=True)
class RawExample:
    """One labelled input as it comes from a source (encoded bytes, not yet decoded)."""

    content: bytes
    label: str | None  # classification; None for regression
    user_id: str | None = None
    split: str | None = None  # None: the dataset assigns one
    source_path: str | None = None
    value: float | None = None  # regression target


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
    #: settings a project made from this source starts with: keep the 8x8 size
    settings: ClassVar[dict[str, Any]] = {"image_size": 8}

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


def read_csv(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV; tolerant of trailing empty columns, strict about encoding."""
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist", path=path)
    try:
        with path.open(newline="", encoding=encoding) as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{str(path)!r} is not valid {encoding}: {exc.reason} at byte {exc.start}; "
            "pass the file's encoding (e.g. --encoding latin-1)",
            path=path,
        ) from None
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", path=path) from None
    except csv.Error as exc:
        raise DataError(f"{str(path)!r} is not a readable CSV: {exc}", path=path) from None
    if not rows:
        raise DataError(f"CSV file {str(path)!r} is empty", path=path)
    header = [h.strip() for h in rows[0]]
    if header:
        header[0] = header[0].removeprefix("\ufeff")  # a byte-order mark (Excel's UTF-8)
    return header, rows[1:]


def csv_column(header: list[str], name: str, path: Path, what: str) -> int:
    """The index of column ``name``; a ``DataError`` listing the columns when it is absent."""
    if not name or name not in header:
        present = [h for h in header if h]
        option = "--target" if what == "target" else f"--{what}-column"
        raise DataError(
            f"{what} column {name!r} is not in {path.name}; its columns are {present} "
            f"(choose one with {option})",
            path=path,
        )
    return header.index(name)


class CsvManifestSource:
    """A CSV with a path column and a label column; paths relative to the CSV's folder."""

    def __init__(
        self,
        path: str | Path,
        *,
        path_column: str = "path",
        label_column: str = "label",
        encoding: str = "utf-8",
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.name = str(self.path)
        header, rows = read_csv(self.path, encoding)
        pi = csv_column(header, path_column, self.path, "path")
        li = csv_column(header, label_column, self.path, "label")
        self.rows: list[tuple[Path, str]] = []
        self.skipped: list[dict[str, str]] = []
        for n, row in enumerate(rows, start=2):
            cells = row + [""] * (max(pi, li) + 1 - len(row))
            file, label = cells[pi].strip(), cells[li].strip()
            if not file or not label:
                self.skipped.append(
                    {"path": f"{self.path.name}:{n}", "reason": "empty path or label"}
                )
                continue
            self.rows.append((self.path.parent / file, label))
        if not self.rows:
            raise DataError(f"manifest {str(self.path)!r} lists no files", path=self.path)
        suffixes = {p.suffix.lower() for p, _ in self.rows}
        self.modality = "audio" if suffixes <= set(AUDIO_SUFFIXES) else "image"

    def __iter__(self) -> Iterator[RawExample]:
        for file, label in self.rows:
            rel = (
                str(file.relative_to(self.path.parent))
                if file.is_relative_to(self.path.parent)
                else str(file)
            )
            try:
                content = file.read_bytes()
            except OSError as exc:
                # An unreadable file is reported by the import, like a corrupt one.
                content = b""
                rel = f"{rel} ({exc.strerror})"
            yield RawExample(content, label, source_path=rel)


def _number(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


class TabularCsvSource:
    """A CSV of numeric feature columns and one numeric target column (regression)."""

    def __init__(self, path: str | Path, *, target: str, encoding: str = "utf-8") -> None:
        self.path = Path(path).expanduser().resolve()
        self.name = str(self.path)
        header, rows = read_csv(self.path, encoding)
        ti = csv_column(header, target, self.path, "target")
        self.columns = [h for i, h in enumerate(header) if h and i != ti]
        if not self.columns:
            raise DataError(f"{self.path.name} has no feature column besides {target!r}")
        index = {h: i for i, h in enumerate(header)}
        self.rows: list[tuple[dict[str, float], float, int]] = []
        self.skipped: list[dict[str, str]] = []
        for n, row in enumerate(rows, start=2):
            if not any(c.strip() for c in row):
                continue
            cells = row + [""] * (len(header) - len(row))
            y = _number(cells[ti])
            feats = {c: _number(cells[index[c]]) for c in self.columns}
            bad = [c for c, v in feats.items() if v is None]
            if y is None or bad:
                what = f"target {cells[ti]!r}" if y is None else f"columns {bad}"
                self.skipped.append(
                    {"path": f"{self.path.name}:{n}", "reason": f"not a number in {what}"}
                )
                continue
            self.rows.append(({c: float(v) for c, v in feats.items() if v is not None}, y, n))
        if not self.rows:
            raise DataError(f"{str(self.path)!r} has no row with numeric values", path=self.path)

    def __iter__(self) -> Iterator[RawExample]:
        for feats, y, n in self.rows:
            yield RawExample(
                tabular_bytes(feats), None, source_path=f"{self.path.name}:{n}", value=y
            )


class DiabetesSource:
    """scikit-learn's bundled diabetes regression set (442 patients, 10 features)."""

    name = "diabetes"

    def __iter__(self) -> Iterator[RawExample]:
        from sklearn.datasets import load_diabetes

        bunch = load_diabetes()
        for i, (row, y) in enumerate(zip(bunch.data, bunch.target, strict=True)):
            feats = {str(n): float(v) for n, v in zip(bunch.feature_names, row, strict=True)}
            yield RawExample(
                tabular_bytes(feats), None, source_path=f"diabetes[{i}]", value=float(y)
            )
