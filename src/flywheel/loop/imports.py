"""Import a model already in production: an ONNX classifier or regressor trained
elsewhere becomes a served version of the project.

The steps, in order: check the file (onnx.checker, a session of ONNX Runtime, one
input); the labels (a classifier's, in its output order: the project's classes) and
the preprocessing it reads (the project's dataset's, or as declared: image mode and
size, tabular columns with their mean and std); the graph's input and output shapes
against them; a test run on the project's held-out rows (finite outputs of the right
shape; logits or probabilities, declared or detected), scored; register it (the file,
its SHA-256, its spec; the candidate alias); production when there is none yet, or
with ``promote`` (loaded, verified and self-checked first, as every promotion).

The first retrain trains a challenger of the zoo or a plugin (``arch``, else the
project's ``arch`` setting, else the task's default) and gates it against the imported
champion on the same rows. ``arch`` given here becomes the project's setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.errors import InputError
from flywheel.evaluation.scoring import score
from flywheel.loop.services import Services
from flywheel.loop.train import check_arch
from flywheel.models import IMPORTED_ARCH, ModelSpec
from flywheel.outputs import softmax
from flywheel.registry import VersionInfo
from flywheel.registry.imported import (
    GraphInfo,
    OnnxGraph,
    declared_preprocessing,
    outputs_kind,
    read_graph,
)
from flywheel.settings import set_config_value
from flywheel.tasks import Task

__all__ = ["ImportResult", "import_model"]

#: at most this many held-out rows make the test run
CHECK_ROWS = 256


@dataclass(frozen=True)
class ImportResult:
    model: VersionInfo
    promoted: bool
    #: the architecture the next retrain trains as the challenger
    challenger_arch: str

    def to_json(self) -> dict[str, Any]:
        imported = self.model.training_config["imported"]
        return {
            "model_version": self.model.version,
            "arch": self.model.arch,
            "aliases": self.model.aliases,
            "promoted": self.promoted,
            "challenger_arch": self.challenger_arch,
            "outputs": imported["outputs"],
            "outputs_detected": imported["outputs_detected"],
            "graph": imported["graph"],
            "preprocessing": imported["preprocessing"],
            "metrics": self.model.metrics,
        }


def import_model(
    sv: Services,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    objective: str | None = None,
    outputs: str | None = None,
    image_mode: str | None = None,
    image_size: int | None = None,
    columns: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    arch: str | None = None,
    promote: bool = False,
) -> ImportResult:
    """Register the ONNX file at ``path`` as a served version (see the module's steps).

    ``labels``: a classifier's classes in the order of its outputs (the project's own
    classes, in any order); none for a regressor. ``objective``: checked against the
    project's task. ``outputs``: ``logits`` or ``probabilities`` (None: detected on the
    test run). ``image_mode``/``image_size``, or ``columns`` with ``mean`` and ``std``:
    the preprocessing the graph reads, where it is not the project's dataset's.
    """
    task, source = sv.ctx.task, Path(path)
    data = source.read_bytes()
    graph = read_graph(data, str(source))
    if objective is not None and objective != task.objective:
        raise InputError(f"--objective {objective}: this project is {task.name} ({task.objective})")
    ds = sv.data.info()
    names = _labels(task, ds.labels, labels)
    if outputs is not None and not names:
        raise InputError(
            "--outputs is a classifier's (logits or probabilities); a regressor gives values"
        )
    options: dict[str, Any] = {"image_mode": image_mode, "image_size": image_size}
    options |= {"columns": columns, "mean": mean, "std": std}
    prep = declared_preprocessing(task.modality, ds.preprocessing, options)
    rows = sv.data.rows(ds.version, "holdout")[:CHECK_ROWS]
    if not rows:
        raise InputError("the project has no held-out rows to test an imported model on")
    spec = ModelSpec(IMPORTED_ARCH, task.name, (), tuple(names), preprocessing=prep)
    sample = sv.data.arrays(rows, spec)
    spec = replace(spec, input_shape=tuple(int(d) for d in sample.x.shape[1:]))
    _check_shapes(graph, spec, task)
    challenger = arch or sv.ctx.settings.arch or task.default_arch
    check_arch(sv, challenger)
    raw = OnnxGraph(data, replace(spec, hparams={"output": graph.output_name})).raw(sample.x)
    _check_outputs(raw, spec)
    kind, detected = outputs_kind(raw, outputs) if names else ("values", False)
    spec = replace(spec, hparams={"outputs": kind, "output": graph.output_name})
    report, _ = score(softmax(raw) if kind == "logits" else raw, sample.y, names)
    record = {
        "file": source.name,
        "graph": graph.to_json(),
        "outputs": kind,
        "outputs_detected": detected,
        "preprocessing": prep,
        "challenger_arch": challenger,
    }
    info = sv.registry.register_imported(
        data,
        spec,
        dataset_version=ds.version,
        source=record,
        metrics={**report, "import_check_rows": len(rows)},
        reason=f"imported from {source.name}",
    )
    if arch is not None and arch != sv.ctx.settings.arch:
        # The project trains this architecture from now on (the first retrain included).
        set_config_value(sv.ctx.settings.project_dir, "arch", arch)
        sv.ctx.settings = sv.ctx.settings.model_copy(update={"arch": arch})
    promoted = promote or sv.registry.production() is None
    if promoted:
        why = "import" if promote else "import: no production model yet"
        info = sv.registry.promote(info.version, f"{why} ({source.name})")
    return ImportResult(sv.registry.version(info.version), promoted, challenger)


def _labels(task: Task, project: list[str], given: Sequence[str] | None) -> list[str]:
    """A classifier's labels in its output order: the project's classes, each once."""
    names = [str(n).strip() for n in given or []]
    if task.is_regression:
        if names:
            raise InputError(f"a regressor has no labels; this project is {task.name}")
        return []
    if not names:
        raise InputError(
            "a classifier needs its labels in the order of its outputs: --labels a,b,c "
            "or --labels-file (one per line)"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    missing, unknown = sorted(set(project) - set(names)), sorted(set(names) - set(project))
    if twice or missing or unknown:
        parts = [f"{what} {', '.join(v)}" for what, v in
                 (("repeated:", twice), ("missing:", missing), ("not the project's:", unknown))
                 if v]  # fmt: skip
        raise InputError(
            f"the labels must be the project's classes ({', '.join(project)}), each once, in "
            f"the order of the model's outputs; {'; '.join(parts)}"
        )
    return names


def _check_shapes(graph: GraphInfo, spec: ModelSpec, task: Task) -> None:
    """The graph takes what the preprocessing decodes to, and gives one value per label."""
    want = (None, *spec.input_shape)
    takes = graph.input_shape
    fits = len(takes) == len(want)  # the batch axis: any size (a fixed one runs row by row)
    if not fits or any(g is not None and g != w for g, w in zip(takes[1:], want[1:], strict=True)):
        raise InputError(
            f"the graph's input {graph.input_name!r} takes {_shape(takes)}; the project's "
            f"{task.modality} rows decode to {_shape(want)} ({_describe(spec.preprocessing)}): "
            f"declare the preprocessing it expects ({_options(task.modality)})"
        )
    width = graph.output_shape[1] if len(graph.output_shape) == 2 else None
    if spec.labels and width is not None and width != len(spec.labels):
        raise InputError(
            f"the graph's output {graph.output_name!r} has {width} values per row; --labels "
            f"names {len(spec.labels)} ({', '.join(spec.labels)})"
        )
    if not spec.labels and width not in (None, 1):
        raise InputError(
            f"the graph's output {graph.output_name!r} has {width} values per row; a regressor "
            "gives one"
        )


def _check_outputs(raw: np.ndarray, spec: ModelSpec) -> None:
    """The test run's outputs: one row per input, a value per label, all finite."""
    n = len(raw)
    if spec.labels and raw.shape != (n, len(spec.labels)):
        raise InputError(
            f"on the project's rows the graph gives outputs of shape {raw.shape}; "
            f"--labels names {len(spec.labels)} classes"
        )
    if not np.isfinite(raw).all():
        raise InputError("on the project's held-out rows the graph gives values not finite")


def _shape(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


def _describe(prep: dict[str, Any]) -> str:
    if prep.get("kind") == "image":
        return f"mode {prep['mode']}, {prep['height']}x{prep['width']}"
    if prep.get("kind") == "tabular":
        return f"{len(prep['columns'])} columns"
    return f"the dataset's {prep.get('kind')} preprocessing"


def _options(modality: str) -> str:
    return {
        "image": "--image-mode L|RGB, --image-size N",
        "tabular": "--columns with --mean and --std",
    }.get(modality, f"a {modality} project's imports read its dataset's preprocessing")
