"""Data: sources, image preprocessing, dataset versions."""

from flywheel.data.datasets import HOLDOUT, TRAIN, Arrays, assign_splits, content_hash, load_arrays
from flywheel.data.images import (
    ImagePreprocessing,
    decode_image,
    encode_png,
    infer_preprocessing,
    probe,
)
from flywheel.data.sources import (
    DigitsSource,
    ImageFolderSource,
    ListSource,
    RawExample,
    Source,
    digits_arrays,
    resolve_source,
)

__all__ = [
    "HOLDOUT",
    "TRAIN",
    "Arrays",
    "DigitsSource",
    "ImageFolderSource",
    "ImagePreprocessing",
    "ListSource",
    "RawExample",
    "Source",
    "assign_splits",
    "content_hash",
    "decode_image",
    "digits_arrays",
    "encode_png",
    "infer_preprocessing",
    "load_arrays",
    "probe",
    "resolve_source",
]
