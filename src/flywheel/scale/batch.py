"""Batch scoring (``flywheel predict-batch``): a folder or a manifest of any size scored by
production and logged like served calls, on Ray Data or in this process.

One pipeline, the same on both paths:

1. read the inputs as a stream (``flywheel.data.inputs``), in batches of
   ``predict_batch_size``; a row that cannot be read carries its reason;
2. ``Scorer``: each row through the door (as ``/v1/predict`` keeps it), decoded as the
   model reads it, the good rows through ONNX Runtime in one call; a row that fails
   gets its reason, the others go on;
3. the driver commits each batch's rows to the prediction log in one transaction (the
   inputs to the blobs first), so that the review queue and the drift windows see them
   as any other call, then writes them to the output file.

On Ray (``--on ray``): the reading is one task pinned to this machine (the inputs need
only be readable here), the scoring a ``map_batches`` over a pool of ``batch_actors``
actors, each holding the production graph in an ONNX Runtime session of its own;
blocks stream through in order, so memory stays bounded whatever the input's size. In
process: the same ``Scorer`` in a loop.

The graph is production's: the server's own (``serving.onnx`` in the version's folder,
exported when it first served, read only if it still hashes to the SHA-256 the registry
recorded), or, where none is there yet, exported for the run and checked against torch
as the server's is; no copy is kept elsewhere, so that erasing a version erases its
graph. An imported version is its own graph. A version that does not run on ONNX
Runtime is scored by torch in process, and refused on Ray.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from flywheel.data.inputs import BatchInputs, InputOptions
from flywheel.data.modalities import create_codec
from flywheel.errors import ConfigError, FlywheelError, InputError, ModelError
from flywheel.feedback.records import PredictionResult, answer
from flywheel.loop.services import Services
from flywheel.models import ModelSpec
from flywheel.privacy.door import Door
from flywheel.registry.backends import (
    GRAPH_FILE,
    Backend,
    ImportedBackend,
    OnnxBackend,
    load_backend,
)
from flywheel.registry.imported import OnnxGraph
from flywheel.scale.runtime import ray_session
from flywheel.settings import Settings
from flywheel.tasks import get_task

__all__ = ["BatchReport", "Progress", "Scorer", "ScoringModel", "predict_batch"]

OUT_SUFFIXES = (".jsonl", ".csv")
#: the bad rows a report names (all of them are in the output file)
EXAMPLES = 20

#: called once the rows are counted, then after each batch is logged: (rows done, of
#: them bad, rows in all)
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class ScoringModel:
    """What a scorer needs of a version, as plain data (it travels to Ray's actors)."""

    version: int
    #: ``ModelSpec`` JSON: labels, input shape, preprocessing; for the graph, how to
    #: read its outputs (``hparams``: ``output``, ``outputs``)
    spec: dict[str, Any]
    #: the ONNX graph (empty: the version is scored by torch, in process only)
    graph: bytes = b""
    #: ONNX Runtime's intra-op threads per session
    threads: int = 1

    @property
    def graph_sha256(self) -> str | None:
        return hashlib.sha256(self.graph).hexdigest() if self.graph else None


class Scorer:
    """Scores a batch of inputs (``name``, ``content``, ``error`` columns) with one model:
    a Ray Data callable class (one per actor) and the in-process loop's scorer alike.
    Adds ``output`` (probabilities, or values), ``latency_ms`` (the batch's decode and
    forward time per row), ``scorer`` (which one) and the ``error`` of each row that
    failed; ``content`` comes back as the door kept it."""

    def __init__(
        self, model: ScoringModel, settings: Settings, backend: Backend | None = None
    ) -> None:
        task = get_task(settings.task)
        spec = ModelSpec.from_json(model.spec)
        self.door = Door(settings, task)
        self.codec = create_codec(task.modality)
        self.params = spec.preprocessing
        self.shape = tuple(spec.input_shape)
        self.width = len(spec.labels)
        self.run: Callable[[np.ndarray], np.ndarray]
        if backend is not None:
            self.run = backend.run
        elif model.graph:
            self.run = OnnxGraph(model.graph, spec, threads=model.threads).outputs
        else:
            raise ModelError(
                f"v{model.version} has no ONNX graph to score with", version=model.version
            )
        self.codec.warm_up(self.params)
        #: which scorer this is (a report counts the scorers that did work)
        self.ident = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        n = len(batch["name"])
        kept: list[bytes] = [b""] * n
        errors = [str(e) for e in batch["error"]]
        decoded: dict[int, np.ndarray] = {}
        for i, content in enumerate(batch["content"]):
            if errors[i]:
                continue
            try:
                kept[i] = self.door.keep(bytes(content))
                x = self.codec.decode(kept[i], self.params)
                if tuple(x.shape) != self.shape:
                    raise InputError(
                        f"decoded to shape {list(x.shape)}; the model takes {list(self.shape)}"
                    )
                decoded[i] = x
            except Exception as exc:  # a bad input is reported, never fatal
                errors[i], kept[i] = _reason(exc), b""
        out = np.zeros((n, self.width) if self.width else (n,), np.float32)
        if decoded:
            rows = list(decoded)
            out[rows] = self._outputs(np.stack([decoded[i] for i in rows]), rows, errors)
        per_row = (time.perf_counter() - started) * 1000.0 / max(1, len(decoded))
        return {
            "name": batch["name"],
            "content": np.array(kept, dtype=object),
            "error": np.array(errors, dtype=object),
            "output": out,
            "latency_ms": np.full(n, per_row),
            "scorer": np.full(n, self.ident, dtype=object),
        }

    def _outputs(self, x: np.ndarray, rows: list[int], errors: list[str]) -> np.ndarray:
        """The batch's outputs; if the batch fails as a whole, row by row (a failing row
        gets its reason and zeros)."""
        try:
            return np.asarray(self.run(x), np.float32)
        except Exception:  # find the row(s) at fault
            out = np.zeros((len(x), self.width) if self.width else (len(x),), np.float32)
            for j, i in enumerate(rows):
                try:
                    out[j] = np.asarray(self.run(x[j : j + 1]), np.float32)[0]
                except Exception as exc:
                    errors[i] = f"the model failed on it: {_reason(exc)}"
            return out


@dataclass
class BatchReport:
    version: int
    on: str  # "ray" or "local"
    rows: int = 0
    scored: int = 0
    bad: int = 0
    #: the first bad rows: (name, reason)
    examples: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    out: Path | None = None
    #: the graph that scored (None: torch)
    graph_sha256: str | None = None
    actors: int = 1
    #: the scorers (actors) that scored rows
    scorers: set[str] = field(default_factory=set)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "on": self.on,
            "rows": self.rows,
            "scored": self.scored,
            "bad": self.bad,
            "bad_examples": [{"input": n, "error": e} for n, e in self.examples],
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s, 1),
            "out": None if self.out is None else str(self.out),
            "graph_sha256": self.graph_sha256,
            "actors": self.actors,
            "scorers": len(self.scorers),
        }


def predict_batch(
    services: Services,
    path: str | Path,
    *,
    on: str | None = None,
    out: str | Path | None = None,
    options: InputOptions | None = None,
    user_id: str | None = None,
    batch_size: int | None = None,
    actors: int | None = None,
    on_progress: Progress | None = None,
) -> BatchReport:
    """Score every input at ``path`` with production and log each as a prediction.

    ``on``: "ray" (Ray Data, ``ray_address``) or "local" (this process); default: Ray
    when ``ray_address`` is set. ``out``: a ``.jsonl`` or ``.csv`` file of the answers
    (prediction ids, labels, probabilities or values) and of the bad rows with their
    reasons. ``user_id``: whom the predictions are for (stored as a pseudonym).
    """
    st = services.ctx.settings
    on = on or ("ray" if st.ray_address is not None else "local")
    if on not in ("ray", "local"):
        raise ConfigError(f"on must be 'ray' or 'local'; got {on!r}")
    if out is not None and Path(out).suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"the output file must be .jsonl or .csv; got {Path(out).name!r}")
    size = batch_size or st.predict_batch_size
    pool = actors or st.batch_actors
    pseudonym = services.identity.pseudonym(user_id)  # a bad id is refused before any work
    inputs = BatchInputs.open(path, services.ctx.task.modality, _columns(services), options)
    model, backend = _scoring_model(services)
    if on == "ray" and backend is not None:
        raise ModelError(
            f"v{model.version} ({model.spec['arch']}) is not served by ONNX Runtime (its "
            "architecture does not export, or onnxruntime is missing), so it cannot be "
            "scored on Ray: score it in process (--on local)",
            version=model.version,
        )
    report = BatchReport(
        model.version, on, graph_sha256=model.graph_sha256, actors=pool if on == "ray" else 1
    )
    total = inputs.count()
    if on_progress is not None:
        on_progress(0, 0, total)
    started = time.perf_counter()
    batches = (
        _on_ray(st, inputs, model, size, pool)
        if on == "ray"
        else _in_process(Scorer(model, st, backend), inputs, size)
    )
    # closing: a failure here ends the pipeline (and puts Ray Data's settings back) at once
    with _Sink(services, model, pseudonym, report, out) as sink, contextlib.closing(batches):
        for scored in batches:
            sink.take(scored)
            if on_progress is not None:
                on_progress(report.rows, report.bad, max(total, report.rows))
    report.seconds = time.perf_counter() - started
    return report


# -- the model ------------------------------------------------------------------------


def _columns(services: Services) -> tuple[str, ...]:
    """A tabular model's feature columns (a manifest's rows are read by them)."""
    if services.ctx.task.modality != "tabular":
        return ()
    loaded = services.registry.cache.current().loaded
    return tuple(str(c) for c in loaded.spec.preprocessing.get("columns", ()))


def _scoring_model(services: Services) -> tuple[ScoringModel, Backend | None]:
    """Production as a scorer takes it: its ONNX graph (and, where it has none, the
    torch backend that scores it in process)."""
    threads = services.ctx.settings.serving_threads
    loaded = services.registry.cache.current().loaded  # verified when it was loaded
    spec, graph = loaded.spec, _served_graph(services, loaded.version)
    backend: Backend | None = None
    if graph is None:
        with tempfile.TemporaryDirectory(prefix="flywheel-batch-") as tmp:
            # Exported and checked against torch on a random batch, as the server's
            # graph is; an imported version is its own graph. No copy is kept: the
            # registry's folder is where a version's files live, and are erased.
            backend = load_backend(loaded, "onnx", artifact_dir=Path(tmp), threads=threads)
            if isinstance(backend, ImportedBackend):
                graph, backend = backend.graph.data, None
            elif isinstance(backend, OnnxBackend):
                graph, backend = (Path(tmp) / GRAPH_FILE).read_bytes(), None
    if graph is not None and not spec.imported:
        # Read as an imported graph is: logits out of the exporter's output "output".
        spec = replace(spec, hparams={"outputs": "logits", "output": "output"})
    return ScoringModel(loaded.version, spec.to_json(), graph or b"", threads), backend


def _served_graph(services: Services, version: int) -> bytes | None:
    """The graph the server runs for ``version`` (exported once, on first serving, into
    the version's folder and its SHA-256 recorded), if it is a file here that still
    hashes to it; None otherwise."""
    info = services.registry.version(version)
    path = Path(info.artifact_dir) / GRAPH_FILE
    if not info.graph_sha256 or not path.is_file():
        return None
    data = path.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == info.graph_sha256 else None


# -- in process and on Ray -----------------------------------------------------------


def _in_process(
    scorer: Scorer, inputs: BatchInputs, size: int
) -> Generator[dict[str, np.ndarray], None, None]:
    for batch in inputs.batches(size):
        yield scorer(batch)


def _read(batch: dict[str, np.ndarray], inputs: BatchInputs, size: int) -> Iterator[Any]:
    """The Ray task that reads the inputs, as a stream of batches."""
    del batch  # one row: the task's only job is to run once
    yield from inputs.batches(size)


def _on_ray(
    st: Settings, inputs: BatchInputs, model: ScoringModel, size: int, actors: int
) -> Generator[dict[str, np.ndarray], None, None]:
    """Scored batches, in input order, from a Ray Data pipeline: read (pinned here) →
    ``map_batches`` over a pool of ``actors`` scorers. Connects and checks the cluster
    at once; the pipeline runs as the batches are taken."""
    ray = ray_session(st)
    from ray.util.client import ray as client
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cpus = float(ray.cluster_resources().get("CPU", 0))
    if actors > cpus:
        raise ConfigError(
            f"batch_actors = {actors} but the Ray cluster has {cpus:g} CPUs: each actor takes one"
        )
    read_args: dict[str, Any] = {"num_cpus": 0}
    if not client.is_connected():  # a Ray Client driver is no node to pin to
        here = ray.get_runtime_context().get_node_id()
        read_args["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
    return _pipeline(ray, st, inputs, model, size, actors, read_args)


def _pipeline(
    ray: Any,
    st: Settings,
    inputs: BatchInputs,
    model: ScoringModel,
    size: int,
    actors: int,
    read_args: dict[str, Any],
) -> Generator[dict[str, np.ndarray], None, None]:
    from ray.data import ActorPoolStrategy

    with _data_context(_block_bytes(inputs, size)):
        ds = ray.data.from_items([{"part": 0}]).map_batches(
            _read, fn_kwargs={"inputs": inputs, "size": size}, batch_size=1, **read_args
        )
        ds = ds.map_batches(
            Scorer,
            fn_constructor_kwargs={"model": model, "settings": st},
            batch_size=size,
            # Two calls queued per actor at most: the first actor up does not take a
            # small run's every batch before the others have started.
            compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
            num_cpus=1,
        )
        yield from ds.iter_batches(batch_size=size, batch_format="numpy")


def _block_bytes(inputs: BatchInputs, size: int) -> int:
    """Ray Data's blocks, at most: about one batch of these inputs (its first batch's
    bytes, with room), so that a block is a batch for one actor. Ray Data's own size,
    128 MiB, would carry a run of small files to one actor in one block."""
    first = next(inputs.batches(size), None)
    held = 0 if first is None else sum(len(c) + len(n) + 64 for c, n in zip(
        first["content"], first["name"], strict=True
    ))  # fmt: skip
    return held + held // 2 + 4096


@contextlib.contextmanager
def _data_context(block_bytes: int) -> Iterator[None]:
    """Ray Data as this pipeline runs it, put back as it was afterwards: blocks in input
    order (the output file's), of about a batch each (spread over the actors), no
    progress bars or execution notes of its own (the caller shows progress)."""
    from ray.data import DataContext

    with warnings.catch_warnings():
        # Ray Data's own: its DataContext sets a field it deprecated as it is created,
        # and it warns that one input cannot keep the actors busy, not knowing that the
        # one read task streams many blocks.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
        warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors")
        ctx = DataContext.get_current()
        saved = (
            ctx.execution_options.preserve_order,
            ctx.target_max_block_size,
            ctx.enable_progress_bars,
            ctx.print_on_execution_start,
        )
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        try:
            ctx.execution_options.preserve_order = True
            ctx.target_max_block_size = block_bytes
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            quiet.setLevel(logging.WARNING)
            yield
        finally:
            (
                ctx.execution_options.preserve_order,
                ctx.target_max_block_size,
                ctx.enable_progress_bars,
                ctx.print_on_execution_start,
            ) = saved
            quiet.setLevel(level)


# -- the log and the output file ----------------------------------------------------


class _Sink:
    """Commits scored batches to the prediction log and writes the output file."""

    def __init__(
        self,
        services: Services,
        model: ScoringModel,
        user_id: str | None,
        report: BatchReport,
        out: str | Path | None,
    ) -> None:
        self.services = services
        self.model = model
        self.labels = [str(v) for v in model.spec["labels"]]
        self.user_id = user_id
        self.report = report
        self.path = None if out is None else Path(out).expanduser().resolve()
        report.out = self.path
        self._stack = contextlib.ExitStack()
        self._write: Callable[[dict[str, Any]], None] = lambda record: None

    def __enter__(self) -> _Sink:
        if self.path is not None:
            self._write = self._writer(self._stack.enter_context(self.path.open("w", newline="")))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _writer(self, fh: IO[str]) -> Callable[[dict[str, Any]], None]:
        assert self.path is not None
        if self.path.suffix.lower() == ".csv":
            head = ["input", "prediction_id", "model_version"]
            head += [f"p_{lab}" for lab in self.labels] if self.labels else []
            head += ["label"] if self.labels else ["value"]
            writer = csv.DictWriter(fh, [*head, "error"], extrasaction="ignore")
            writer.writeheader()

            def row(record: dict[str, Any]) -> None:
                probs = record.pop("probabilities", None) or {}
                writer.writerow(record | {f"p_{k}": repr(v) for k, v in probs.items()})

            return row

        def line(record: dict[str, Any]) -> None:
            fh.write(json.dumps(record) + "\n")

        return line

    def take(self, batch: dict[str, np.ndarray]) -> None:
        """One scored batch: its good rows committed in one transaction, then every row
        written out."""
        rows: list[dict[str, Any]] = []
        done: list[tuple[str, PredictionResult | str]] = []
        self.report.scorers.update(str(v) for v in batch["scorer"])
        for name, content, error, output, latency in zip(
            batch["name"], batch["content"], batch["error"], batch["output"],
            batch["latency_ms"], strict=True,
        ):  # fmt: skip
            reason = str(error)
            if not reason:
                try:
                    result, row = answer(
                        self.model.version, self.labels, np.asarray(output), content=bytes(content),
                        user_id=self.user_id, latency_ms=float(latency),
                    )  # fmt: skip
                except FlywheelError as exc:
                    reason = str(exc)
                else:
                    rows.append(row)
                    done.append((str(name), result))
                    continue
            done.append((str(name), reason))
        if rows:
            self.services.predictions.log(rows)
        r = self.report
        for name, outcome in done:
            r.rows += 1
            if isinstance(outcome, str):
                r.bad += 1
                if len(r.examples) < EXAMPLES:
                    r.examples.append((name, outcome))
                self._write({"input": name, "error": outcome})
                continue
            r.scored += 1
            record: dict[str, Any] = {
                "input": name,
                "prediction_id": outcome.prediction_id,
                "model_version": outcome.model_version,
            }
            if outcome.value is not None:
                record["value"] = outcome.value
            else:
                record["label"] = outcome.label
                record["probabilities"] = outcome.probabilities
            self._write(record)


def _reason(exc: BaseException) -> str:
    """A bad row's reason: flywheel's own message, or the error's kind and message."""
    if isinstance(exc, FlywheelError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
