"""Registry: model versions and their aliases (production, candidate), verified
artifacts, the model held in memory and the backends that run it.

The functions over the database are in ``flywheel.registry.repo`` (they take the
caller's session); ``flywheel.registry.service`` opens the transactions and holds
the one model cache.
"""

from flywheel.registry.artifacts import SPEC, WEIGHTS, Hashes, load_artifact, save_artifact
from flywheel.registry.backends import (
    BACKENDS,
    Backend,
    FakeBackend,
    ImportedBackend,
    OnnxBackend,
    TorchBackend,
    load_backend,
)
from flywheel.registry.loaded import LoadedModel, load_model
from flywheel.registry.versions import CANDIDATE, PRODUCTION, VersionInfo

__all__ = [
    "BACKENDS",
    "CANDIDATE",
    "PRODUCTION",
    "SPEC",
    "WEIGHTS",
    "Backend",
    "FakeBackend",
    "Hashes",
    "ImportedBackend",
    "LoadedModel",
    "OnnxBackend",
    "TorchBackend",
    "VersionInfo",
    "load_artifact",
    "load_backend",
    "load_model",
    "save_artifact",
]
