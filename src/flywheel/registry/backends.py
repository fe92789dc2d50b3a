"""What runs a model version: one interface, three backends.

- ``OnnxBackend`` (the default): the version's graph in ONNX Runtime. The graph is
  exported once per version into its registry folder (``serving.onnx``) and checked
  against torch before it serves; a graph that does not match falls back to torch.
- ``TorchBackend``: eager PyTorch (the fallback, and the only one for models whose
  export is not supported, e.g. the MiniLM text classifier).
- ``FakeBackend``: for tests: fixed outputs, an optional delay, a record of batch sizes.

An imported version (``flywheel import-model``) is its own graph: ``ImportedBackend``
runs it in ONNX Runtime, with nothing to export or compare against.

Every backend takes a decoded batch and returns probabilities (classification) or
values (regression), so the batcher and the routes do not care which one runs.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from flywheel.errors import ConfigError
from flywheel.export.onnx import compare, write_graph
from flywheel.models import arch_info
from flywheel.outputs import softmax
from flywheel.registry.artifacts import ArtifactFolder
from flywheel.registry.imported import OnnxGraph
from flywheel.registry.loaded import LoadedModel

__all__ = [
    "BACKENDS",
    "Backend",
    "FakeBackend",
    "ImportedBackend",
    "OnnxBackend",
    "TorchBackend",
    "load_backend",
]

log = logging.getLogger("flywheel.serving")

BACKENDS = ("onnx", "torch")
GRAPH_FILE = "serving.onnx"


class Backend(Protocol):
    """A model version ready to serve: decode inputs, run batches."""

    name: str
    version: int
    labels: list[str]  # empty for regression
    input_shape: tuple[int, ...]  # one decoded input's shape

    def decode(self, content: bytes) -> np.ndarray:
        """One stored-form input (image/WAV bytes, UTF-8 text, features JSON) → model input."""
        ...

    def run(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [N, classes] or values [N] for a decoded batch."""
        ...


class TorchBackend:
    """Eager PyTorch on the loaded version."""

    name = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.version = loaded.version
        self.labels = loaded.labels
        self.input_shape = tuple(loaded.spec.input_shape)

    def decode(self, content: bytes) -> np.ndarray:
        return self.loaded.decode(content)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.loaded.outputs(x)


class OnnxBackend(TorchBackend):
    """ONNX Runtime on the version's exported graph; decoding as the version's codec does."""

    name = "onnx"

    def __init__(self, loaded: LoadedModel, session: Any, graph_sha256: str = "") -> None:
        super().__init__(loaded)
        self.session = session
        #: the SHA-256 of the graph this session runs
        self.graph_sha256 = graph_sha256

    def run(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(None, {"input": x})[0]
        if not self.labels:
            return out.reshape(-1)
        return softmax(out)


class ImportedBackend(OnnxBackend):
    """An imported version's own graph (verified at load) in ONNX Runtime."""

    def __init__(self, loaded: LoadedModel, graph: OnnxGraph, threads: int = 1) -> None:
        super().__init__(loaded, graph.session_with(threads), graph.sha256)
        self.graph = graph

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.graph.outputs(x, self.session)


class FakeBackend:
    """For tests: probabilities that name ``label`` (or one value), after ``delay_s``."""

    name = "fake"

    def __init__(
        self,
        version: int,
        labels: list[str],
        *,
        label: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.version = version
        self.labels = labels
        self.input_shape: tuple[int, ...] = (4,)
        self.label = label if label is not None else (labels[0] if labels else None)
        self.delay_s = delay_s
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def decode(self, content: bytes) -> np.ndarray:
        return np.frombuffer(content[:4].ljust(4, b"\0"), np.uint8).astype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(len(x))
        if self.delay_s:
            time.sleep(self.delay_s)
        if not self.labels:
            return np.full(len(x), float(self.version), np.float32)
        out = np.zeros((len(x), len(self.labels)), np.float32)
        out[:, self.labels.index(str(self.label))] = 1.0
        return out


def _onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _serving_graph(
    loaded: LoadedModel, folder: ArtifactFolder, sha256: str | None
) -> tuple[Path, str]:
    """The version's serving graph (a file on this machine) and its SHA-256: exported on
    first use (atomic: workers may race), checked against ``sha256`` (the hash recorded
    when it was first exported) afterwards. A graph that no longer matches is not used:
    it is exported again from the version's weights (which were verified when they were
    loaded)."""
    found = folder.fetch(GRAPH_FILE, sha256)
    if found is not None:
        path, digest = found
        if sha256 is None or digest == sha256:
            return path, digest
        log.warning(
            "v%d: %s does not match the SHA-256 recorded when it was exported "
            "(expected %s…, found %s…); exporting it again from the verified weights",
            loaded.version,
            GRAPH_FILE,
            sha256[:12],
            digest[:12],
        )
    example = np.zeros((1, *loaded.spec.input_shape), np.float32)
    return folder.write_with(GRAPH_FILE, lambda tmp: write_graph(loaded.model, example, tmp))


def load_backend(
    loaded: LoadedModel,
    kind: str,
    *,
    artifact_dir: Path | ArtifactFolder,
    threads: int = 1,
    graph_sha256: str | None = None,
) -> TorchBackend | OnnxBackend:
    """The backend ``kind`` for a loaded version; ONNX falls back to torch (and says why)
    when onnxruntime is missing, the architecture does not export, or the graph does
    not match torch on a random batch. ``graph_sha256``: what the version's serving
    graph hashed to when it was first exported (the backend's ``graph_sha256`` is what
    it runs)."""
    if kind not in BACKENDS:
        raise ConfigError(f"serving_backend must be one of {', '.join(BACKENDS)}; got {kind!r}")
    if isinstance(loaded.model, OnnxGraph):  # imported: a graph, whichever kind is asked
        return ImportedBackend(loaded, loaded.model, threads)
    if kind == "torch":
        return TorchBackend(loaded)
    why = ""
    if not arch_info(loaded.spec.arch).onnx_check:
        why = f"architecture {loaded.spec.arch!r} does not export to ONNX"
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            why = "onnxruntime is not installed (pip install 'flywheel-ml[onnx]')"
    if not why:
        try:
            folder = ArtifactFolder.at(artifact_dir)
            path, digest = _serving_graph(loaded, folder, graph_sha256)
            backend = OnnxBackend(loaded, _onnx_session(path, threads), digest)
            x = np.random.default_rng(0).normal(size=(4, *loaded.spec.input_shape))
            x = x.astype(np.float32)
            # The same tolerance as an exported bundle's parity check.
            match = compare(loaded.outputs(x), backend.run(x))
            if match["match"]:
                return backend
            why = f"its ONNX graph differs from torch (max |diff| {match['max_abs_diff']:.3g})"
        except Exception as exc:  # an export or runtime failure: torch still serves
            why = f"ONNX export or load failed: {exc}"
    log.warning("v%d is served by torch: %s", loaded.version, why)
    return TorchBackend(loaded)
