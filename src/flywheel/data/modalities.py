"""Every modality in one place: the codecs registered by name, and the source resolver.

The modules of each modality (``images``/``codecs`` for images and tables, ``audio``,
``text``) know nothing of each other; this one imports them all, so it is the only
module that names every modality. A new modality registers its codec with
``register_codec`` in its own module and is imported here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flywheel.data.audio import AudioFolderSource
from flywheel.data.codecs import Codec, lookup_codec
from flywheel.data.sources import (
    AUDIO_SUFFIXES,
    CsvManifestSource,
    DiabetesSource,
    DigitsSource,
    ImageFolderSource,
    Source,
    TabularCsvSource,
    read_csv,
)
from flywheel.data.text import TextCsvSource
from flywheel.errors import DataError

__all__ = ["SourceOptions", "create_codec", "resolve_source"]


def create_codec(name: str) -> Codec:
    """The codec of modality ``name`` (image, tabular, audio, text)."""
    return lookup_codec(name)


@dataclass(frozen=True)
class SourceOptions:
    """The options of `flywheel init` (and `evaluate --data`) that shape a source."""

    task: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    text_column: str = "text"
    target: str | None = None
    encoding: str = "utf-8"
    pattern: str = "{label}_{user}_{n}.wav"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _has_wavs(root: Path) -> bool:
    return any(p.suffix.lower() in AUDIO_SUFFIXES for p in root.rglob("*") if p.is_file())


def resolve_source(spec: str, options: SourceOptions | None = None) -> tuple[Source, str]:
    """The source named by ``spec`` (``digits``, ``diabetes``, a folder or a CSV) and its task.

    The task is guessed when the data leave no doubt; otherwise ``options.task`` decides.
    """
    o = options or SourceOptions()
    task = o.task
    if spec == "digits":
        return DigitsSource(), task or "image-classification"
    if spec == "diabetes":
        return DiabetesSource(), task or "regression"
    path = Path(spec).expanduser()
    if path.is_dir():
        if task == "audio-classification" or (task is None and _has_wavs(path)):
            return AudioFolderSource(path, pattern=o.pattern), "audio-classification"
        if task not in (None, "image-classification"):
            raise DataError(f"a folder holds images or audio, not {task} data", path=path)
        return ImageFolderSource(path), "image-classification"
    if path.suffix.lower() == ".csv" or path.is_file():
        if task == "regression" or (task is None and o.target is not None):
            if o.target is None:
                raise DataError("regression from a CSV needs --target COLUMN", path=path)
            return TabularCsvSource(path, target=o.target, encoding=o.encoding), "regression"
        if task == "text-classification":
            src = TextCsvSource(
                path, text_column=o.text_column, label_column=o.label_column, encoding=o.encoding
            )
            return src, "text-classification"
        header, _ = read_csv(path.resolve(), o.encoding)
        if task in (None, "image-classification", "audio-classification") and (
            o.path_column in header
        ):
            manifest = CsvManifestSource(
                path, path_column=o.path_column, label_column=o.label_column, encoding=o.encoding
            )
            guessed = f"{manifest.modality}-classification"
            if task is not None and task != guessed:
                raise DataError(f"the manifest lists {manifest.modality} files, not {task} data")
            return manifest, guessed
        if task is None and o.text_column in header:
            src = TextCsvSource(
                path, text_column=o.text_column, label_column=o.label_column, encoding=o.encoding
            )
            return src, "text-classification"
        raise DataError(
            f"cannot tell what {path.name} holds (columns {[h for h in header if h]}): "
            "give --task and the matching column options (--path-column, --text-column, "
            "--target)",
            path=path,
        )
    raise DataError(
        f"data {spec!r} does not exist (expected 'digits', 'diabetes', a folder or a CSV file)",
        path=path,
    )
