"""Training on Ray Train: the fit loop of ``flywheel.training`` in the workers of a
``TorchTrainer`` (DDP over gloo on CPUs, NCCL on GPUs).

When: a run trains on Ray Train when ``ray_address`` is set and it asks for more than
one worker (``TrainConfig.workers``: the setting ``train_workers``, or ``--train-workers``)
or for a GPU (``train_use_gpu``); otherwise in this process, exactly as without Ray.
``ray_address`` alone does not move training: it is also what ``serve --on ray`` and
``predict-batch`` need, and one CPU worker gives the weights this process gives, only
later (a Ray Train run takes seconds to start).

How a run goes:

- the driver decodes the rows as ever and ships them once through the object store;
  the model goes as its spec (JSON) and its starting weights (safetensors);
- every worker runs ``fit`` on all the rows with ``parallel``: the same seed, the same
  validation split and the same order of batches in every worker, each computing its
  stride of every batch (DistributedSampler's split, of each batch rather than of the
  data) while DDP averages the gradients, so N workers take the steps one process
  takes: the batch size and the learning rate mean what they mean without Ray.
  Validation is split and summed the same way, so early stopping stops all workers at
  the same epoch;
- each epoch goes to ``ray.train.report`` with rank 0's checkpoint (the fit loop's own,
  safetensors + JSON), which Ray Train keeps in ``<storage>/checkpoints/ray-train/<run>``
  (the project folder, or ``storage_url``): a worker that dies restarts the group from
  it, and ``--resume`` continues an interrupted run from it;
- the last report carries the final weights (safetensors) and the fit's result (JSON);
  the driver reads them back from storage, loads the weights into its own model and
  returns the ``FitResult``: the caller registers and gates it like any challenger;
- rank 0 sends each epoch's report (and its mini-batches, twice a second at most) to a
  small actor that the driver reads, so ``on_epoch`` hears them in the calling thread:
  the CLI's bar and a job's log see a Ray run as they see one here. When ``on_epoch``
  raises (a job given up on), the workers are told to stop.

One worker with the same seed gives the weights this process gives, bit for bit (with
as many torch threads: a Ray worker of one CPU has one). Private (DP-SGD) and federated
runs are refused on Ray, naming why (``refuse``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from flywheel.data.datasets import Arrays
from flywheel.errors import ConfigError, FlywheelError, ModelError
from flywheel.models import ModelSpec, create_model
from flywheel.scale.runtime import ray_session
from flywheel.settings import Settings
from flywheel.store.storage import FsspecStorage, Storage, project_storage
from flywheel.training.fit import Augment, EpochReport, FitResult, TrainConfig, fit

__all__ = ["RUNS", "RayTrainer", "fit_on_ray", "has_ray_run", "ray_trainer", "refuse"]

#: where Ray Train keeps its runs (checkpoints, its own bookkeeping), in the storage
RUNS = "checkpoints/ray-train"
#: the final report's files: the weights the run ends with, and the fit's result
WEIGHTS, RESULT = "model.safetensors", "fit.json"
#: restarts of the worker group after a worker dies (from the last checkpoint)
RESTARTS = 1
#: seconds between the driver's looks at what the workers sent
POLL_S = 0.25


def ray_trainer(settings: Settings, config: TrainConfig) -> RayTrainer | None:
    """Where a run of ``config`` trains: None, in this process; or on Ray Train, with
    the run's workers (``config.workers``). What Ray Train cannot train is refused here,
    before any work (ConfigError)."""
    asks = config.workers > 1 or settings.train_use_gpu
    if settings.ray_address is None:
        if asks:
            what = (
                f"train_workers = {config.workers}"
                if config.workers > 1
                else "train_use_gpu = true"
            )
            raise ConfigError(
                f"{what} needs Ray: set ray_address ('local' for this machine, 'auto' or "
                "'ray://host:10001' for a cluster); a run in this process trains on its CPU"
            )
        return None
    if not asks:
        return None
    refuse(config, config.workers, settings.train_use_gpu)
    return RayTrainer(settings, config.workers, settings.train_use_gpu)


def refuse(config: TrainConfig, workers: int, use_gpu: bool = False) -> None:
    """Refuse, naming why, a run Ray Train cannot train as flywheel promises it."""
    where = (
        f"on Ray Train ({workers} worker{'s' if workers > 1 else ''}{', GPUs' if use_gpu else ''})"
    )
    fix = "set train_workers = 1 and train_use_gpu = false to train it in this process"
    if config.federated_clients:
        raise ConfigError(
            f"a federated run cannot train {where}: FedAvg's clients each train on whole "
            "users' rows and the server averages their weights once a round (Flower's "
            "simulation, in this process); Ray Train's workers average gradients at every "
            f"step, which is not federation; {fix}"
        )
    if config.private:
        raise ConfigError(
            f"a private (DP-SGD) run cannot train {where}: user-level DP-SGD samples whole "
            "users, clips each one's gradient and adds one draw of noise to their sum at "
            "each step; split over DDP workers each would clip and noise only its part "
            f"of the batch, and the accountant's epsilon would not hold; {fix}"
        )


def has_ray_run(storage: Storage, name: str = "current") -> bool:
    """Has an interrupted Ray Train run left a checkpoint in ``storage``?"""
    return any(k.endswith(("/state.json", f"/{RESULT}")) for k in storage.list(f"{RUNS}/{name}"))


@dataclass(frozen=True)
class RayTrainer:
    """A run's training on Ray Train: ``workers`` processes (each with a GPU when
    ``use_gpu``) of the cluster at ``settings.ray_address``, checkpoints in the
    project's storage."""

    settings: Settings
    workers: int
    use_gpu: bool = False

    def fit(
        self,
        model: nn.Module,
        train: Arrays,
        config: TrainConfig,
        *,
        spec: ModelSpec,
        regression: bool = False,
        augment: Augment | None = None,
        on_epoch: Any = None,
        run_id: str = "",
        resume: bool = False,
        users: np.ndarray | None = None,
        name: str = "current",
    ) -> FitResult:
        return fit_on_ray(
            model, train, config, spec=spec, settings=self.settings, use_gpu=self.use_gpu,
            regression=regression, augment=augment, on_epoch=on_epoch, run_id=run_id,
            resume=resume, users=users, name=name,
        )  # fmt: skip

    def describe(self) -> str:
        gpu = ", a GPU each" if self.use_gpu else ""
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}{gpu}"

    def record(self) -> dict[str, Any]:
        """How the run trained, for the version's metrics."""
        return {"workers": self.workers, "use_gpu": self.use_gpu}

    def discard(self, name: str = "current") -> None:
        """The run's checkpoints gone (once its model is on record)."""
        project_storage(self.settings).delete_tree(f"{RUNS}/{name}")


def fit_on_ray(
    model: nn.Module,
    train: Arrays,
    config: TrainConfig,
    *,
    spec: ModelSpec,
    settings: Settings,
    use_gpu: bool = False,
    regression: bool = False,
    augment: Augment | None = None,
    on_epoch: Any = None,
    run_id: str = "",
    resume: bool = False,
    users: np.ndarray | None = None,
    name: str = "current",
) -> FitResult:
    """``flywheel.training.fit`` on ``config.workers`` Ray Train workers: ``model`` (built
    from ``spec``, as each worker builds its own) ends with the weights the run ends
    with, and the ``FitResult`` is the one ``fit`` returns.

    The run's checkpoints go to ``<storage>/checkpoints/ray-train/<name>``; ``resume``
    continues the interrupted run there (same ``run_id``), otherwise it starts afresh.
    """
    workers = config.workers
    refuse(config, workers, use_gpu)
    storage = project_storage(settings)
    if resume and not has_ray_run(storage, name):
        raise ModelError("there is no interrupted run to resume")
    path, filesystem = _storage_path(storage)
    ray = ray_session(settings)
    from ray import train as ray_train
    from ray.train.torch import TorchTrainer

    if not resume:
        storage.delete_tree(f"{RUNS}/{name}")
    inbox = ray.remote(num_cpus=0)(_Inbox).remote()
    loop_config = {
        "spec": spec.to_json(),
        "weights": save_tensors(_plain(model.state_dict())),
        "rows": ray.put(train),
        "users": None if users is None else ray.put(users),
        "config": config.to_json(),
        "regression": regression,
        "augment": augment,
        "run_id": run_id,
        "inbox": inbox,
    }
    with warnings.catch_warnings():
        # Ray Data's defaults, made when the trainer is: its own deprecations, not ours.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.")
        trainer = TorchTrainer(
            _worker,
            train_loop_config=loop_config,
            scaling_config=ray_train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=ray_train.RunConfig(
                name=name,
                storage_path=path,
                storage_filesystem=filesystem,
                failure_config=ray_train.FailureConfig(max_failures=RESTARTS),
                checkpoint_config=ray_train.CheckpointConfig(num_to_keep=2),
            ),
        )
    try:
        result = _run(trainer, inbox, on_epoch, f"{workers} worker(s) at {settings.ray_address}")
    finally:
        ray.kill(inbox)
    state, fitted = _final(result.checkpoint)
    model.load_state_dict(state)
    model.eval()
    return fitted


# -- the driver -------------------------------------------------------------------------


class _Inbox:
    """What rank 0 sends the driver (run as an actor of no CPU), and whether the driver
    has stopped listening: then the workers stop."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.stopped = False

    def put(self, item: tuple[Any, ...]) -> bool:
        if not self.stopped:
            self.items.append(item)
        return self.stopped

    def take(self) -> list[tuple[Any, ...]]:
        out, self.items = self.items, []
        return out

    def stop(self) -> None:
        self.stopped = True


def _run(trainer: Any, inbox: Any, on_epoch: Any, where: str) -> Any:
    """``trainer.fit()`` in a thread of its own, while this one hands what the workers
    send to ``on_epoch``; its result, or its error as flywheel's."""
    import ray

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name="flywheel-ray-train", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(POLL_S)
            _deliver(ray.get(inbox.take.remote()), on_epoch)
        _deliver(ray.get(inbox.take.remote()), on_epoch)
    except BaseException:
        ray.get(inbox.stop.remote())  # the caller gave up: the workers stop at their next report
        raise
    if "error" in box:
        raise _failure(box["error"], where) from box["error"]
    return box["result"]


def _deliver(items: list[tuple[Any, ...]], on_epoch: Any) -> None:
    if on_epoch is None:
        return
    for kind, *rest in items:
        if kind == "epoch":
            on_epoch(EpochReport(**rest[0]))
        elif kind == "batch" and callable(getattr(on_epoch, "on_batch", None)):
            on_epoch.on_batch(*rest)
        elif kind == "stage" and callable(getattr(on_epoch, "on_stage", None)):
            on_epoch.on_stage(*rest)


def _failure(exc: BaseException, where: str) -> FlywheelError:
    """A failed run's error: a worker's own flywheel error as it was raised, or a
    ModelError that says what Ray said."""
    seen: list[BaseException] = list(getattr(exc, "worker_failures", {}).values())
    seen += [getattr(exc, "controller_failure", None) or exc]
    while seen:
        err = seen.pop(0)
        if isinstance(err, FlywheelError):
            return err
        seen += [e for e in (getattr(err, "cause", None), err.__cause__) if e is not None]
    text = " ".join(str(exc).split())
    return ModelError(f"training on Ray Train ({where}) failed: {text[:600]}")


def _final(checkpoint: Any) -> tuple[dict[str, torch.Tensor], FitResult]:
    """The weights and the fit's result of a run's last report."""
    if checkpoint is None:
        raise ModelError("the Ray Train run ended without its final checkpoint")
    with checkpoint.as_directory() as folder:
        try:
            state = load_tensors((Path(folder) / WEIGHTS).read_bytes())
            result = json.loads((Path(folder) / RESULT).read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"the Ray Train run's final checkpoint cannot be read: {exc}") from exc
    return state, FitResult(
        best_epoch=result["best_epoch"],
        epochs_run=result["epochs_run"],
        best_val_loss=result["best_val_loss"],
        best_val_metric=result["best_val_metric"],
        history=[EpochReport(**h) for h in result["history"]],
        resumed_from=result["resumed_from"],
        refit_rows=result["refit_rows"],
    )


def _storage_path(storage: Storage) -> tuple[str, Any]:
    """``RunConfig``'s ``storage_path`` and ``storage_filesystem`` for ``RUNS``."""
    local = storage.local_path(RUNS)
    if local is not None:
        return str(local), None
    if isinstance(storage, FsspecStorage):
        import pyarrow.fs  # type: ignore[import-untyped]  # Ray's own (the [ray] extra)

        handler = pyarrow.fs.FSSpecHandler(storage.fs)
        return f"{storage.root}/{RUNS}", pyarrow.fs.PyFileSystem(handler)
    raise ConfigError(f"Ray Train cannot keep its checkpoints in storage {storage.url!r}")


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors writes: on the CPU, contiguous, no shared storage."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


# -- a worker ---------------------------------------------------------------------------


@dataclass
class _Workers:
    """This worker's place among the run's (``DataParallel``, over torch.distributed)."""

    rank: int
    size: int
    device: torch.device | None

    def wrap(self, module: nn.Module) -> nn.Module:
        from ray.train.torch import prepare_model

        wrapped: nn.Module = prepare_model(module)  # DDP when there are 2 or more
        return wrapped

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def sync(self, module: nn.Module) -> None:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


class _Report:
    """A worker's ``on_epoch``: every epoch reported to Ray Train by every worker (a
    report is a barrier), with rank 0's checkpoint of it; rank 0's progress to the
    driver. Raises when the driver has stopped listening."""

    def __init__(self, rank: int, inbox: Any, folder: Path) -> None:
        self.rank, self.inbox, self.folder = rank, inbox, folder
        self.last = 0.0

    def __call__(self, r: EpochReport) -> None:
        import ray.train

        checkpoint = None
        if self.rank == 0 and r.phase == "fit" and self.folder.is_dir():
            checkpoint = ray.train.Checkpoint.from_directory(str(self.folder))
        ray.train.report(asdict(r), checkpoint=checkpoint)
        self._send(("epoch", asdict(r)))

    def on_batch(self, phase: str, epoch: int, epochs: int, done: int, batches: int) -> None:
        now = time.monotonic()
        if done < batches and now - self.last < 0.5:
            return
        self.last = now
        self._send(("batch", phase, epoch, epochs, done, batches))

    def stage(self, text: str) -> None:
        self._send(("stage", text))

    def _send(self, item: tuple[Any, ...]) -> None:
        import ray

        if self.rank == 0 and ray.get(self.inbox.put.remote(item)):
            raise ModelError("the run was given up on by its driver")


def _worker(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: the fit loop on all the rows, its stride of every batch;
    rank 0 reports the final weights and the fit's result."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    rank, size = ctx.get_world_rank(), ctx.get_world_size()
    group = _Workers(rank, size, None if device.type == "cpu" else device)
    model = create_model(ModelSpec.from_json(cfg["spec"]))
    model.load_state_dict(load_tensors(cfg["weights"]))
    if group.device is not None:
        model.to(group.device)
    rows = ray.get(cfg["rows"])
    users = None if cfg["users"] is None else ray.get(cfg["users"])
    with tempfile.TemporaryDirectory(prefix="flywheel-ray-train-") as tmp:
        folder = Path(tmp) / "current"
        report = _Report(rank, cfg["inbox"], folder)
        restored = ray.train.get_checkpoint()  # a restarted group's, or --resume's
        if restored is not None:
            with restored.as_directory() as there:
                shutil.copytree(there, folder)
        report.stage(
            f"Ray Train: {size} worker{'s' if size > 1 else ''} ready on {device.type}"
            + (", resuming from the last checkpoint" if restored is not None else "")
        )
        if (folder / RESULT).is_file():  # it had finished: its result again
            _report_final(rank, folder)
            return
        result = fit(
            model,
            rows,
            TrainConfig.from_json(cfg["config"]),
            regression=cfg["regression"],
            augment=cfg["augment"],
            on_epoch=report,
            checkpoint_dir=folder,
            run_id=cfg["run_id"],
            resume=restored is not None,
            users=users,
            parallel=group,
        )
        final = Path(tmp) / "final"
        if rank == 0:
            final.mkdir()
            (final / WEIGHTS).write_bytes(save_tensors(_plain(model.state_dict())))
            (final / RESULT).write_text(json.dumps(_result_json(result)))
        _report_final(rank, final)


def _report_final(rank: int, folder: Path) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if rank == 0 else None
    ray.train.report({"final": True}, checkpoint=checkpoint)


def _result_json(r: FitResult) -> dict[str, Any]:
    return {
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "best_val_loss": r.best_val_loss,
        "best_val_metric": r.best_val_metric,
        "history": [asdict(h) for h in r.history],
        "resumed_from": r.resumed_from,
        "refit_rows": r.refit_rows,
    }
