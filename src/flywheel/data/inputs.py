"""Unlabelled inputs to score (``flywheel predict-batch``), read as a stream: a folder of
files (recursively), or a manifest (CSV or JSON Lines) that names files or holds the
inputs inline (a text column, feature columns).

Nothing is held whole: the folder is walked and the manifest read a row at a time, and
each row comes out in the stored form of the task's input (the bytes ``/v1/predict``
would keep: the file, UTF-8 text, canonical feature JSON). A row that cannot be read
comes out with the reason instead of bytes, so that a run reports it and goes on; a
source that cannot be read at all (no such folder, a manifest without the column the
task needs) is a ``DataError`` before anything is scored.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data.codecs import tabular_bytes
from flywheel.data.sources import AUDIO_SUFFIXES, IMAGE_SUFFIXES, csv_column
from flywheel.errors import DataError

__all__ = ["MANIFEST_SUFFIXES", "BatchInputs", "InputOptions", "InputRow", "as_batch"]

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
#: the files a folder holds per modality
SUFFIXES = {
    "image": IMAGE_SUFFIXES,
    "audio": AUDIO_SUFFIXES,
    "text": (".txt",),
    "tabular": (".json",),
}
#: the first bytes of the files ``/v1/predict`` takes (a GIF named .png is refused there too)
SIGNATURES = {"image": (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"), "audio": (b"RIFF",)}


@dataclass(frozen=True)
class InputOptions:
    """How a manifest names its inputs (`flywheel predict-batch` options)."""

    path_column: str = "path"
    text_column: str = "text"
    id_column: str = "id"
    encoding: str = "utf-8"


@dataclass(frozen=True)
class InputRow:
    """One input: its name (a path, an id, ``manifest.csv:7``) and its stored form, or
    why it could not be read (``error``; ``content`` is then empty)."""

    name: str
    content: bytes = b""
    error: str = ""


@dataclass(frozen=True)
class BatchInputs:
    """The inputs at ``path`` for a task of ``modality`` (``columns``: a tabular model's
    feature columns). Plain data, so that a Ray task can read it too."""

    path: Path
    modality: str
    columns: tuple[str, ...] = ()
    options: InputOptions = field(default_factory=InputOptions)

    @classmethod
    def open(
        cls,
        path: str | Path,
        modality: str,
        columns: tuple[str, ...] = (),
        options: InputOptions | None = None,
    ) -> BatchInputs:
        """Check that ``path`` can be read as inputs of ``modality`` (``DataError`` if not)."""
        inputs = cls(
            Path(path).expanduser().resolve(), modality, columns, options or InputOptions()
        )
        if modality not in SUFFIXES:
            raise DataError(f"cannot score inputs of modality {modality!r}")
        if inputs.path.is_dir():
            return inputs
        if not inputs.path.is_file():
            raise DataError(f"{str(inputs.path)!r} does not exist", path=inputs.path)
        if inputs.path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataError(
                f"{inputs.path.name} is neither a folder nor a manifest "
                f"({', '.join(MANIFEST_SUFFIXES)})",
                path=inputs.path,
            )
        if inputs._is_csv:
            inputs._csv_mode(inputs._csv_header())
        return inputs

    @property
    def _is_csv(self) -> bool:
        return self.path.suffix.lower() == ".csv"

    # -- reading -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[InputRow]:
        if self.path.is_dir():
            return self._folder()
        return self._csv() if self._is_csv else self._jsonl()

    def count(self) -> int:
        """How many rows there are (one cheap pass: names and lines, no file is read)."""
        if self.path.is_dir():
            return sum(1 for _ in self._files())
        with self._open() as fh:
            if self._is_csv:
                return max(0, sum(1 for row in csv.reader(fh) if any(c.strip() for c in row)) - 1)
            return sum(1 for line in fh if line.strip())

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """The rows in batches of ``size``, as columns: ``name``, ``content``, ``error``."""
        chunk: list[InputRow] = []
        for row in self:
            chunk.append(row)
            if len(chunk) == size:
                yield as_batch(chunk)
                chunk = []
        if chunk:
            yield as_batch(chunk)

    # -- a folder ------------------------------------------------------------------------

    def _files(self) -> Iterator[Path]:
        """Every file under the folder, in a fixed order (hidden ones left out)."""
        for top, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    yield Path(top) / name

    def _folder(self) -> Iterator[InputRow]:
        suffixes = SUFFIXES[self.modality]
        for file in self._files():
            name = file.relative_to(self.path).as_posix()
            if file.suffix.lower() not in suffixes:
                yield InputRow(name, error=f"not a {'/'.join(suffixes)} file")
                continue
            yield self._file_row(name, file)

    def _file_row(self, name: str, file: Path) -> InputRow:
        try:
            data = file.read_bytes()
        except OSError as exc:
            return InputRow(name, error=f"cannot be read: {exc.strerror or exc}")
        try:
            return InputRow(name, self._stored(data))
        except DataError as exc:
            return InputRow(name, error=str(exc))

    def _stored(self, data: bytes) -> bytes:
        """A file's bytes in the stored form of the task's input."""
        if self.modality == "text":
            try:
                return _text(data.decode(self.options.encoding))
            except UnicodeDecodeError as exc:
                raise DataError(f"not {self.options.encoding} text: {exc.reason}") from None
        if self.modality == "tabular":
            try:
                doc = json.loads(data)
            except ValueError as exc:
                raise DataError(f"not JSON: {exc}") from None
            return self._features(doc.get("features", doc) if isinstance(doc, dict) else doc)
        signatures = SIGNATURES[self.modality]
        if data and not data.startswith(signatures):
            what = "a PNG or JPEG image" if self.modality == "image" else "a WAV file"
            raise DataError(f"the file's bytes are not {what}")
        return data

    def _features(self, values: Any) -> bytes:
        """Canonical feature JSON of the model's columns (others are left out)."""
        if not isinstance(values, dict):
            raise DataError("features must be an object of column: number")
        missing = [c for c in self.columns if c not in values]
        if missing:
            raise DataError(f"missing feature columns {missing}")
        features = {c: _number(values[c], c) for c in self.columns}
        return tabular_bytes(features)

    # -- a manifest ----------------------------------------------------------------------

    def _open(self) -> Any:
        try:
            return self.path.open(newline="", encoding=self.options.encoding)
        except LookupError:
            raise DataError(f"unknown encoding {self.options.encoding!r}") from None

    def _csv_header(self) -> list[str]:
        with self._open() as fh:
            try:
                header = next(csv.reader(fh), [])
            except (UnicodeDecodeError, csv.Error) as exc:
                raise DataError(f"{self.path.name} is not a readable CSV: {exc}") from None
        header = [h.strip() for h in header]
        if header:
            header[0] = header[0].removeprefix("\ufeff")
        return header

    def _csv_mode(self, header: list[str]) -> str:
        """What a manifest's rows hold: ``path`` (files), ``text`` or ``features``."""
        o = self.options
        if o.path_column in header:
            return "path"
        if self.modality == "text":
            csv_column(header, o.text_column, self.path, "text")
            return "text"
        if self.modality == "tabular":
            missing = [c for c in self.columns if c not in header]
            if missing:
                raise DataError(
                    f"{self.path.name} lacks the model's feature columns {missing} (and has no "
                    f"{o.path_column!r} column of files)",
                    path=self.path,
                )
            return "features"
        csv_column(header, o.path_column, self.path, "path")
        return "path"

    def _csv(self) -> Iterator[InputRow]:
        with self._open() as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader, [])]
                if header:
                    header[0] = header[0].removeprefix("\ufeff")
                mode = self._csv_mode(header)
                for cells in reader:
                    if not any(c.strip() for c in cells):
                        continue
                    record = dict(zip(header, cells, strict=False))
                    yield self._record(record, f"{self.path.name}:{reader.line_num}", mode)
            except (UnicodeDecodeError, csv.Error) as exc:
                raise DataError(
                    f"{self.path.name} cannot be read past line {reader.line_num}: {exc}; is "
                    f"it {self.options.encoding}? (--encoding)",
                    path=self.path,
                ) from None

    def _jsonl(self) -> Iterator[InputRow]:
        with self._open() as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{self.path.name}:{n}"
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    yield InputRow(where, error=f"not JSON: {exc}")
                    continue
                if not isinstance(record, dict):
                    yield InputRow(where, error="not a JSON object")
                    continue
                yield self._record(record, where, self._json_mode(record))

    def _json_mode(self, record: dict[str, Any]) -> str:
        o = self.options
        if o.path_column in record:
            return "path"
        if self.modality == "text" and o.text_column in record:
            return "text"
        return "features" if self.modality == "tabular" else "path"

    def _record(self, record: dict[str, Any], where: str, mode: str) -> InputRow:
        """One manifest row as an input, named by its id column, its path or its line."""
        o = self.options
        ident = str(record.get(o.id_column) or "").strip()
        try:
            if mode == "path":
                file = str(record.get(o.path_column) or "").strip()
                if not file:
                    return InputRow(ident or where, error=f"empty {o.path_column!r}")
                return self._file_row(ident or file, self.path.parent / file)
            if mode == "text":
                value = record.get(o.text_column)
                if not isinstance(value, str):
                    raise DataError(f"{o.text_column!r} is not a text")
                return InputRow(ident or where, _text(value))
            values = record.get("features", record)
            return InputRow(ident or where, self._features(values))
        except DataError as exc:
            return InputRow(ident or where, error=str(exc))


def as_batch(rows: list[InputRow]) -> dict[str, np.ndarray]:
    """Rows as the columns a scorer takes (Ray Data's NumPy batch format)."""
    return {
        "name": np.array([r.name for r in rows], dtype=object),
        "content": np.array([r.content for r in rows], dtype=object),
        "error": np.array([r.error for r in rows], dtype=object),
    }


def _text(value: str) -> bytes:
    """A text input's stored form (as ``{"text": ...}`` would send it): UTF-8, trimmed,
    not empty, no NUL."""
    text = value.strip()
    if not text:
        raise DataError("empty text")
    if "\x00" in text:
        raise DataError("the text holds a NUL character")
    return text.encode("utf-8")


def _number(value: Any, column: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"feature {column!r} is not a number: {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise DataError(f"feature {column!r} is not a finite number: {value!r}")
    return v
