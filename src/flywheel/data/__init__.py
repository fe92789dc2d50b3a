"""Data: sources, codecs (bytes → arrays per modality), cleaning, splits and rows.

Dataset versions in the store: ``flywheel.data.repo`` (in the caller's session) and
``flywheel.data.service`` (imports, versions, rows as arrays).
"""

from flywheel.data.cleaning import Cleaned, clean
from flywheel.data.codecs import (
    Codec,
    ImageCodec,
    TabularCodec,
    known_codecs,
    register_codec,
    tabular_bytes,
)
from flywheel.data.datasets import (
    HOLDOUT,
    TRAIN,
    Arrays,
    DatasetInfo,
    Row,
    WeightedRow,
    arrays_from_source,
    assign_splits,
    content_hash,
    label_sort_key,
    load_arrays,
    split_by_group,
    targets,
    value_bins,
)
from flywheel.data.images import (
    ImagePreprocessing,
    average_hash,
    decode_image,
    encode_png,
    probe_image,
)
from flywheel.data.modalities import SourceOptions, create_codec, resolve_source
from flywheel.data.sources import (
    AUDIO_SUFFIXES,
    IMAGE_SUFFIXES,
    CsvManifestSource,
    DiabetesSource,
    DigitsSource,
    ImageFolderSource,
    ListSource,
    RawExample,
    Source,
    TabularCsvSource,
    digits_arrays,
    read_csv,
)

__all__ = [
    "AUDIO_SUFFIXES",
    "HOLDOUT",
    "IMAGE_SUFFIXES",
    "TRAIN",
    "Arrays",
    "Cleaned",
    "Codec",
    "CsvManifestSource",
    "DatasetInfo",
    "DiabetesSource",
    "DigitsSource",
    "ImageCodec",
    "ImageFolderSource",
    "ImagePreprocessing",
    "ListSource",
    "RawExample",
    "Row",
    "Source",
    "SourceOptions",
    "TabularCodec",
    "TabularCsvSource",
    "WeightedRow",
    "arrays_from_source",
    "assign_splits",
    "average_hash",
    "clean",
    "content_hash",
    "create_codec",
    "decode_image",
    "digits_arrays",
    "encode_png",
    "known_codecs",
    "label_sort_key",
    "load_arrays",
    "probe_image",
    "read_csv",
    "register_codec",
    "resolve_source",
    "split_by_group",
    "tabular_bytes",
    "targets",
    "value_bins",
]
