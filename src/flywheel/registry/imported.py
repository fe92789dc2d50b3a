"""Imported models: an ONNX classifier or regressor trained elsewhere, served as a version.

An imported version is a graph and a spec: ``model.onnx`` (the file as it came, its
SHA-256 recorded and verified at every load, like a trained version's weights) and
``spec.json`` (arch ``"onnx"``, its labels, the preprocessing it reads, whether its
first output is logits or probabilities). ONNX Runtime runs it; there are no torch
weights, so what needs them (explanations, export, int8, warm starts, DP fine-tuning)
refuses it by name (``needs_weights``).

``read_graph`` checks a file (onnx.checker) and reads its one input and its output;
``declared_preprocessing`` turns a project's native preprocessing and the user's
options (image mode and size, tabular columns with their mean and std) into what the
graph reads; ``outputs_kind`` tells logits from probabilities on a test run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.errors import InputError, ModelError
from flywheel.models import IMPORTED_ARCH, ModelSpec
from flywheel.outputs import softmax
from flywheel.registry.artifacts import SPEC, ArtifactFolder, Hashes

__all__ = [
    "GRAPH",
    "OUTPUTS",
    "GraphInfo",
    "OnnxGraph",
    "declared_preprocessing",
    "load_imported",
    "needs_weights",
    "outputs_kind",
    "read_graph",
    "save_imported",
]

#: an imported version's graph, in its registry folder
GRAPH = "model.onnx"
#: what an imported classifier's first output holds
OUTPUTS = ("logits", "probabilities")
#: ONNX Runtime's input types → the array type fed to them
_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


@dataclass(frozen=True)
class GraphInfo:
    """An ONNX file's one input and the output flywheel reads (None: a dynamic axis)."""

    input_name: str
    input_shape: tuple[int | None, ...]
    input_type: str
    output_name: str
    output_shape: tuple[int | None, ...]
    opset: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_graph(data: bytes, source: str) -> GraphInfo:
    """Check an ONNX file (onnx.checker, then a session of ONNX Runtime) and read its
    input and its first float tensor output; ``InputError`` naming ``source`` otherwise."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ModelError("pip install 'flywheel-ml[onnx]' to import an ONNX model") from exc
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{source!r} is not a valid ONNX model: {first}") from None
    session = _session(data, 1, source)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise InputError(f"{source!r} takes {len(inputs)} inputs ({names}); flywheel feeds one")
    if str(inputs[0].type) not in _TYPES:
        raise InputError(f"{source!r} takes {inputs[0].type}; flywheel feeds {', '.join(_TYPES)}")
    # The first float tensor: a classifier's scores also where a label tensor comes first
    # (skl2onnx's output_label, output_probability with zipmap=False).
    floats = ("tensor(float)", "tensor(double)", "tensor(float16)")
    tensors = [o for o in session.get_outputs() if str(o.type) in floats]
    if not tensors:
        kinds = ", ".join(f"{o.name}: {o.type}" for o in session.get_outputs())
        raise InputError(f"{source!r} has no float tensor output to read scores from ({kinds})")
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return GraphInfo(
        input_name=inputs[0].name,
        input_shape=_dims(inputs[0].shape),
        input_type=str(inputs[0].type),
        output_name=tensors[0].name,
        output_shape=_dims(tensors[0].shape),
        opset=int(opset),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _dims(shape: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def _session(data: bytes, threads: int, source: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # an operator or type ONNX Runtime does not run
        raise InputError(f"ONNX Runtime cannot run {source!r}: {exc}") from None


def declared_preprocessing(
    modality: str, native: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """What an imported graph reads: the project's native preprocessing (the same as its
    dataset's), changed by the options of its modality (``image_mode``, ``image_size``;
    ``columns`` with ``mean`` and ``std``); an option of another modality is refused."""
    given = {k: v for k, v in options.items() if v is not None}
    kinds = {"image": ("image_mode", "image_size"), "tabular": ("columns", "mean", "std")}
    own = kinds.get(modality, ())
    other = [k for k in given if k not in own]
    if other:
        flags = ", ".join("--" + k.replace("_", "-") for k in other)
        takes = ", ".join("--" + k.replace("_", "-") for k in own) or "none: the dataset's own"
        raise InputError(f"{flags} do not apply to {modality} inputs (options: {takes})")
    out = dict(native)
    if modality == "image":
        mode = given.get("image_mode", native["mode"])
        if mode not in ("L", "RGB"):
            raise InputError(f"--image-mode must be L or RGB; got {mode!r}")
        side = given.get("image_size")
        h, w = (side, side) if side else (native["height"], native["width"])
        out = {"kind": "image", "mode": mode, "height": int(h), "width": int(w)}
    elif modality == "tabular":
        out.update(_columns(native, given))
    return out


def _columns(native: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Tabular: the columns in the order the graph reads them, with the mean and std it
    was trained to subtract and divide by (mean 0, std 1: raw values)."""
    columns = list(given.get("columns") or native["columns"])
    if "columns" in given and ("mean" not in given or "std" not in given):
        raise InputError(
            "--columns needs --mean and --std (one value per column, as the model was "
            "trained to standardise them; 0s and 1s for raw values)"
        )
    if set(columns) != set(native["columns"]) or len(columns) != len(native["columns"]):
        raise InputError(
            f"--columns must name the project's columns ({', '.join(native['columns'])}) in "
            f"the order the model reads them; got {', '.join(columns)}"
        )
    out: dict[str, Any] = {"columns": columns}
    for key in ("mean", "std"):
        values = [float(v) for v in given[key]] if key in given else None
        if values is None:
            by_name = dict(zip(native["columns"], native[key], strict=True))
            values = [float(by_name[c]) for c in columns]
        if len(values) != len(columns):
            raise InputError(
                f"--{key} has {len(values)} values for the {len(columns)} columns "
                f"({', '.join(columns)})"
            )
        if key == "std" and any(v <= 0 for v in values):
            raise InputError(f"--std values must be positive; got {values}")
        out[key] = values
    return out


def outputs_kind(out: np.ndarray, declared: str | None) -> tuple[str, bool]:
    """(``logits`` or ``probabilities``, whether it was detected): rows of values in
    [0, 1] that sum to 1 are probabilities; anything else is logits. A declared
    ``probabilities`` that is not is refused."""
    probs = bool(
        out.ndim == 2
        and len(out)
        and (out >= -1e-6).all()
        and (out <= 1 + 1e-6).all()
        and np.allclose(out.sum(1), 1.0, atol=1e-3)
    )
    if declared is None:
        return ("probabilities" if probs else "logits"), True
    if declared not in OUTPUTS:
        raise InputError(f"--outputs must be logits or probabilities; got {declared!r}")
    if declared == "probabilities" and not probs:
        raise InputError(
            "--outputs probabilities: the graph's outputs on the project's rows are not "
            f"probabilities (rows sum to {float(out.sum(1).min()):.3g}..."
            f"{float(out.sum(1).max()):.3g}, values {float(out.min()):.3g}..{float(out.max()):.3g})"
        )
    return declared, False


class OnnxGraph(nn.Module):
    """An imported graph in ONNX Runtime, standing where a torch model would: it answers
    (``outputs``; ``forward`` for torch callers) but has no weights and no gradients."""

    def __init__(self, data: bytes, spec: ModelSpec, *, threads: int = 1) -> None:
        super().__init__()
        self.data = data
        self.spec = spec
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.session = _session(data, threads, "the imported graph")
        (given,) = self.session.get_inputs()
        self.input_name: str = given.name
        self.dtype = _TYPES.get(str(given.type))
        if self.dtype is None:
            feeds = ", ".join(_TYPES)
            raise ModelError(f"the graph's input is {given.type}; flywheel feeds {feeds}")
        self.output_name = str(spec.hparams.get("output", ""))
        self.probabilities = spec.hparams.get("outputs") == "probabilities"
        #: a graph exported for batches of one size (often 1) is run that many rows at a time
        batch = given.shape[0] if given.shape else None
        self.batch: int | None = batch if isinstance(batch, int) and batch > 0 else None

    def session_with(self, threads: int) -> Any:
        """A session of the same verified bytes with ``threads`` intra-op threads."""
        return _session(self.data, threads, "the imported graph")

    def raw(self, x: np.ndarray, session: Any = None) -> np.ndarray:
        """The graph's output for a decoded batch: (N, classes), or (N,) for regression."""
        session = session or self.session
        names = [self.output_name] if self.output_name else None
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not len(x):
            return np.zeros((0, len(self.spec.labels)) if self.spec.labels else (0,), np.float32)
        step, parts = self.batch or len(x), []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            if len(chunk) < step:  # a fixed batch size: pad the last chunk, keep its rows
                chunk = np.concatenate(
                    [chunk, np.zeros((step - len(chunk), *x.shape[1:]), x.dtype)]
                )
            parts.append(session.run(names, {self.input_name: chunk})[0][: len(x) - i])
        out = np.concatenate(parts).astype(np.float32).reshape(len(x), -1)
        if self.spec.labels:
            return out
        if out.shape[1] != 1:
            raise ModelError(f"the graph gives {out.shape[1]} values a row; a regressor gives one")
        return out[:, 0]

    def outputs(self, x: np.ndarray, session: Any = None) -> np.ndarray:
        """Probabilities (classification) or values (regression), as every backend gives."""
        out = self.raw(x, session)
        if not self.spec.labels or self.probabilities or not out.size:
            return out
        return softmax(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.raw(x.detach().cpu().numpy()))


def needs_weights(spec: ModelSpec, what: str, version: int | None = None) -> None:
    """Refuse ``what`` (explanations, export, ...) for an imported version, by name."""
    if spec.imported:
        name = "this version" if version is None else f"v{version}"
        raise ModelError(
            f"{name} is an imported ONNX model: {what} needs torch weights, which it does "
            "not have (it serves its graph as it came); retrain to get a version of an "
            "architecture that has them",
            version=version,
        )


def save_imported(data: bytes, spec: ModelSpec, folder: Path | ArtifactFolder) -> Hashes:
    """Write the graph and its spec into ``folder``; their SHA-256 (read back, for a
    folder on this machine)."""
    assert spec.arch == IMPORTED_ARCH
    spec_text = json.dumps(spec.to_json(), indent=2, sort_keys=True)
    here = folder if isinstance(folder, Path) else folder.local()
    if here is None:
        assert isinstance(folder, ArtifactFolder)
        return Hashes(
            weights=folder.write(GRAPH, data), spec=folder.write(SPEC, spec_text.encode())
        )
    here.mkdir(parents=True, exist_ok=True)
    tmp = here / (GRAPH + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, here / GRAPH)
    (here / SPEC).write_text(spec_text)
    return Hashes(
        weights=hashlib.sha256((here / GRAPH).read_bytes()).hexdigest(),
        spec=hashlib.sha256((here / SPEC).read_bytes()).hexdigest(),
    )


def load_imported(
    folder: Path | ArtifactFolder, hashes: Hashes, *, what: str
) -> tuple[OnnxGraph, ModelSpec]:
    """An imported version's graph and spec, each verified against ``hashes``."""
    files = ArtifactFolder.at(folder)
    spec_bytes = files.read(SPEC, hashes.spec, what)
    data = files.read(GRAPH, hashes.weights, what)
    try:
        spec = ModelSpec.from_json(json.loads(spec_bytes))
        graph = OnnxGraph(data, spec)
    except (ValueError, KeyError, TypeError, InputError) as exc:
        raise ModelError(f"{what} in {str(files)!r} cannot be loaded: {exc}") from exc
    return graph, spec
