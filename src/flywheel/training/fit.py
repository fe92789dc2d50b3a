"""The fit loop: cross-entropy or MSE, Adam with weight decay (L2), a learning-rate
schedule, augmentation, early stopping on a validation split, and checkpoints to resume."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from flywheel.data.datasets import Arrays
from flywheel.errors import ModelError
from flywheel.training.checkpoint import (
    Checkpoint,
    CheckpointSlot,
    load_checkpoint,
    save_checkpoint,
)
from flywheel.training.dp import PrivacyRecord, fit_private
from flywheel.training.federated import assign_clients, fit_federated

__all__ = [
    "DataParallel",
    "EpochReport",
    "FitResult",
    "TrainConfig",
    "fit",
    "predict_outputs",
    "predict_proba",
    "seed_everything",
    "split_units",
    "split_validation",
]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class DataParallel(Protocol):
    """The processes of one data-parallel run (``flywheel.scale.train`` makes them on Ray
    Train). Each runs this same fit loop on all the rows, draws the same batches from the
    same seeded generator, and computes the ``rank``-th stride of every batch; the
    gradients are averaged across them (DDP), so each step is the one a single process
    takes on the whole batch, and the batch size and learning rate mean what they mean
    in one process."""

    rank: int
    size: int
    device: torch.device | None  # where the model and its batches go (None: where they are)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` as it takes its training steps (DDP: it averages the gradients)."""
        ...

    def sum(self, values: list[float]) -> list[float]:
        """Each of ``values`` summed over the processes (every process gets the sums)."""
        ...

    def sync(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) copied to every process."""
        ...


class _Alone:
    """The whole run in this process."""

    rank: int = 0
    size: int = 1
    device: torch.device | None = None

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def sum(self, values: list[float]) -> list[float]:
        return values

    def sync(self, module: nn.Module) -> None:
        pass


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved whole with every model version."""

    arch: str | None = None  # None: the task's default
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.25
    patience: int = 5
    val_fraction: float = 0.15
    seed: int = 0
    warm_start: bool = True
    lr_schedule: str = "none"  # none, cosine, plateau
    augment: bool = False
    image_size: int | None = None  # images: side to resize to (None: the architecture's)
    finetune_layers: int = 0  # text: top encoder layers trained with the head
    # Differential privacy (user-level DP-SGD, see flywheel.training.dp): on when an ε
    # target or an explicit noise multiplier is given.
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    dp_noise_multiplier: float | None = None  # explicit σ (ε is then computed, not targeted)
    # Federated (Flower FedAvg, simulated here): on when federated_clients >= 2.
    federated_clients: int = 0
    federated_rounds: int = 10
    local_epochs: int = 1
    # Every labelled row counts: after early stopping has chosen the epoch count on the
    # validation split, train again from the same start on training + validation rows
    # for that many epochs, replaying the search's learning rates (non-private runs).
    refit: bool = True
    # Ray Train workers the run takes (``flywheel.scale.train``: more than one trains there,
    # with the same batches and steps; ``fit`` itself is always one of them).
    workers: int = 1

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("none", "cosine", "plateau"):
            raise ValueError(
                f"lr_schedule must be one of none, cosine, plateau; got {self.lr_schedule!r}"
            )
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1; got {self.workers}")
        if self.dp_epsilon is not None and self.dp_epsilon <= 0:
            raise ValueError(f"dp_epsilon must be > 0; got {self.dp_epsilon}")
        if not 0 < self.dp_delta < 1:
            raise ValueError(f"dp_delta must be in (0, 1); got {self.dp_delta}")
        if self.dp_max_grad_norm <= 0:
            raise ValueError(f"dp_max_grad_norm must be > 0; got {self.dp_max_grad_norm}")
        noisy = self.dp_noise_multiplier is None or self.dp_noise_multiplier > 0
        if self.private and noisy and math.isinf(self.dp_max_grad_norm):
            raise ValueError("noise needs a finite dp_max_grad_norm (it scales the noise)")

    @property
    def private(self) -> bool:
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_metric: float  # accuracy (classification) or MSE (regression)
    lr: float
    phase: str = "fit"  # "fit": the search with early stopping; "refit": on all rows (no val)

    @property
    def val_accuracy(self) -> float:
        return self.val_metric

    def line(self) -> str:
        """The epoch as a job's progress line."""
        if self.phase == "refit":
            return f"refit {self.epoch}/{self.epochs} on all rows: loss {self.train_loss:.4f}"
        return (
            f"epoch {self.epoch}/{self.epochs}: loss {self.train_loss:.4f}, "
            f"val_loss {self.val_loss:.4f}, val_metric {self.val_metric:.4f}"
        )


#: what a progress callback may also offer to hear of each mini-batch:
#: ``on_epoch.on_batch(phase, epoch, epochs, done, batches)`` (the CLI's bars do)
BatchFn = Callable[[str, int, int, int, int], None]


def _on_batch(
    on_epoch: Any, phase: str, epoch: int, epochs: int
) -> Callable[[int, int], None] | None:
    hook = getattr(on_epoch, "on_batch", None)
    if hook is None:
        return None
    return lambda done, batches: hook(phase, epoch, epochs, done, batches)


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    best_val_metric: float
    history: list[EpochReport] = field(default_factory=list)
    resumed_from: int | None = None
    privacy: PrivacyRecord | None = None  # what a private run spent
    federated: dict[str, Any] | None = None  # clients, rounds, rows per client
    refit_rows: int | None = None  # rows of the refit (training + validation); None: none

    @property
    def best_val_accuracy(self) -> float:
        return self.best_val_metric


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def _seed(seed: int, group: DataParallel) -> torch.Generator:
    """``seed_everything``; in a data-parallel run every process then draws dropout (and
    kornia's augmentation) from torch's global generator on a stream of its own, while
    the generator returned (the batches' order) is the same in all of them."""
    gen = seed_everything(seed)
    if group.rank > 0:
        torch.manual_seed((seed + 1_000_003 * group.rank) % 2**63)
    return gen


def split_validation(data: Arrays, fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """A seeded train/validation split of the training rows (stratified for classes)."""
    tr, va = _split_indices(data, fraction, seed)
    return _take(data, tr), _take(data, va)


def split_units(units: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of units whose number falls in the lowest ``fraction`` go to validation."""
    val = (np.asarray(units, dtype=np.int64) % 10_000) < round(fraction * 10_000)
    if val.all() or not val.any():  # too few units to split that way: one unit out
        val = units == units[0]
        if val.all():
            raise ModelError("a private run needs rows of at least two users")
    return np.flatnonzero(~val), np.flatnonzero(val)


def _take(data: Arrays, idx: np.ndarray) -> Arrays:
    w = None if data.weights is None else data.weights[idx]
    return Arrays(x=data.x[idx], y=data.y[idx], labels=data.labels, weights=w)


def _split_indices(data: Arrays, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = len(data)
    if n < 2:
        raise ModelError(f"{n} training row(s) are too few to keep a validation split")
    n_val = min(n - 1, max(1, round(n * fraction)))
    stratify = None
    if data.y.dtype.kind in "iu":
        counts = np.bincount(data.y)
        counts = counts[counts > 0]
        if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
            stratify = data.y
    tr, va = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)
    tr.sort()
    va.sort()
    return tr, va


@torch.no_grad()
def predict_outputs(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Raw outputs (logits, or values for regression) in batches."""
    model.eval()
    out = [
        model(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    logits = predict_outputs(model, x, batch_size)
    if logits.size == 0:
        return logits
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def _loss_fn(model: nn.Module, regression: bool) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """Per-row losses (no reduction), so rows can carry weights."""
    if not regression:
        return nn.CrossEntropyLoss(reduction="none")
    # MSE on the standardised target, so the learning rate means the same for any unit.
    scale = float(getattr(model, "y_std", torch.tensor(1.0))) ** 2

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out, y, reduction="none") / scale

    return mse


@torch.no_grad()
def _encode(
    prefix: nn.Module,
    x: np.ndarray,
    batch_size: int = 128,
    on_batch: Callable[[int], None] | None = None,
    device: torch.device | None = None,
) -> np.ndarray:
    """The frozen prefix's features of ``x`` (``on_batch(rows done)`` after each batch)."""
    prefix.eval()
    parts = []
    for i in range(0, len(x), batch_size):
        parts.append(prefix(_to(torch.from_numpy(x[i : i + batch_size]), device)).cpu())
        if on_batch is not None:
            on_batch(min(i + batch_size, len(x)))
    return torch.cat(parts).numpy()


def _features(
    model: nn.Module,
    x_train: np.ndarray,
    x_val: np.ndarray,
    on_epoch: Any,
    device: torch.device | None,
) -> tuple[nn.Module, np.ndarray, np.ndarray, bool]:
    """The part of ``model`` that trains, the rows it reads, and whether it has a frozen
    prefix. A model with a frozen prefix (a pre-trained encoder) is run through it once:
    training the rest on cached features gives the same gradients, many times faster."""
    split = getattr(model, "split_frozen", None)
    frozen = split() if callable(split) else None
    if frozen is None:
        return model, x_train, x_val, False
    prefix, head = frozen
    hook = _on_batch(on_epoch, "features", 1, 1)  # the encoder's pass: a minute or more
    n, total = len(x_train), len(x_train) + len(x_val)
    x_train = _encode(prefix, x_train, on_batch=hook and (lambda k: hook(k, total)), device=device)
    x_val = _encode(prefix, x_val, on_batch=hook and (lambda k: hook(n + k, total)), device=device)
    return head, x_train, x_val, True


def _scheduler(opt: torch.optim.Optimizer, config: TrainConfig) -> Any:
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    return None


def fit(
    model: nn.Module,
    train: Arrays,
    config: TrainConfig,
    *,
    regression: bool = False,
    augment: Augment | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    checkpoint_dir: Path | CheckpointSlot | None = None,
    run_id: str = "",
    resume: bool = False,
    users: np.ndarray | None = None,
    parallel: DataParallel | None = None,
) -> FitResult:
    """Train ``model`` in place; it ends with the weights of its best validation epoch,
    or, with ``config.refit`` (the default), with those of a second run from the same
    start on training + validation rows for the best epoch's count.

    With ``checkpoint_dir`` the state after each epoch is saved there; ``resume``
    continues from it (same ``run_id``) as if the run had not been interrupted.

    A private config (``dp_epsilon`` or ``dp_noise_multiplier``) trains with user-level
    DP-SGD instead (``users[i]``: the user of row ``i``; default one user per row),
    runs every epoch and keeps the last (see ``flywheel.training.dp``).

    With ``parallel`` this is one process of a data-parallel run (``DataParallel``); it
    checkpoints only on rank 0. Private and federated runs train in one process.
    """
    group = _Alone() if parallel is None else parallel
    if group.size > 1 and (config.private or config.federated_clients):
        raise ModelError("private and federated runs train in one process, not data-parallel")
    gen = _seed(config.seed, group)
    if config.private and users is not None and not config.federated_clients:
        # Whole users on one side, chosen by their own number alone: removing a user
        # moves no one else's rows across the split (the user-level argument needs it).
        tr_idx, va_idx = split_units(users, config.val_fraction)
    else:
        tr_idx, va_idx = _split_indices(train, config.val_fraction, config.seed)
    train_part, val = _take(train, tr_idx), _take(train, va_idx)
    loss_fn = _loss_fn(model, regression)

    trainable, x_train, x_val, frozen = _features(
        model, train_part.x, val.x, on_epoch, group.device
    )
    if frozen:
        augment = None
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(train_part.y)
    # Row weights (e.g. the trust of the user who gave a label); None trains them equally.
    w = (
        None
        if train_part.weights is None
        else torch.from_numpy(np.asarray(train_part.weights, dtype=np.float32))
    )
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(val.y)
    wv = None if val.weights is None else torch.from_numpy(np.asarray(val.weights, np.float32))

    opt = torch.optim.Adam(
        [p for p in trainable.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,  # the L2 penalty of the seed (2.1)
    )
    units = (np.arange(len(train)) if users is None else users)[tr_idx]
    if config.federated_clients:
        if resume:
            raise ModelError("a federated run cannot be resumed; train it again")
        return _fit_federated(
            model, train_part, val, loss_fn, config, units,
            regression=regression, augment=augment, on_epoch=on_epoch,
        )  # fmt: skip
    if config.private:
        if resume:
            raise ModelError("a private run cannot be resumed; train it again")
        return _fit_private(
            model, trainable, x, y, w, (xv, yv, wv), opt, gen, loss_fn, config,
            regression=regression, augment=augment, on_epoch=on_epoch, units=units,
        )  # fmt: skip
    start = copy.deepcopy(model.state_dict()) if config.refit else None
    net = group.wrap(trainable)  # what takes the steps: DDP in a data-parallel run
    result = _fit_epochs(
        model, trainable, (x, y, w), (xv, yv, wv), opt, gen, loss_fn, config,
        regression=regression, augment=augment, on_epoch=on_epoch,
        checkpoint_dir=checkpoint_dir, run_id=run_id, resume=resume, net=net, group=group,
    )  # fmt: skip
    if start is not None:
        both = (
            torch.cat([x, xv]),
            torch.cat([y, yv]),
            None if w is None and wv is None else torch.cat([_ones(w, y), _ones(wv, yv)]),
        )
        _refit(
            model, trainable, start, both, result, loss_fn, config, augment, on_epoch, net, group
        )
    return result


def _ones(w: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    return torch.ones(len(y)) if w is None else w


def _refit(
    model: nn.Module,
    trainable: nn.Module,
    start: dict[str, Any],
    rows: Rows,
    result: FitResult,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    config: TrainConfig,
    augment: Augment | None,
    on_epoch: Callable[[EpochReport], None] | None,
    net: nn.Module,
    group: DataParallel,
) -> None:
    """From the search's starting weights, ``result.best_epoch`` epochs on all ``rows``
    (training + validation), each at the learning rate the search used in that epoch;
    the model ends with the last epoch's weights (nothing is left to choose them on)."""
    model.load_state_dict(start)
    gen = _seed(config.seed, group)
    opt = torch.optim.Adam(
        [p for p in trainable.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    epochs = result.best_epoch
    for e in range(1, epochs + 1):
        lr = result.history[e - 1].lr
        for param_group in opt.param_groups:
            param_group["lr"] = lr
        batch = _on_batch(on_epoch, "refit", e, epochs)
        loss = _epoch(net, rows, opt, gen, loss_fn, augment, config.batch_size, batch, group)
        if on_epoch is not None:
            on_epoch(EpochReport(e, epochs, loss, math.nan, math.nan, lr, phase="refit"))
    model.eval()
    result.refit_rows = len(rows[1])


Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass
class _Best:
    """The best epoch so far (lowest validation loss) and the epochs' history."""

    state: dict[str, Any]
    loss: float = math.inf
    metric: float = 0.0
    epoch: int = 0
    since: int = 0  # epochs since it improved
    history: list[EpochReport] = field(default_factory=list)


def _fit_epochs(
    model: nn.Module,
    trainable: nn.Module,
    rows: Rows,
    val: Rows,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    config: TrainConfig,
    *,
    regression: bool,
    augment: Augment | None,
    on_epoch: Callable[[EpochReport], None] | None,
    checkpoint_dir: Path | CheckpointSlot | None,
    run_id: str,
    resume: bool,
    net: nn.Module,
    group: DataParallel,
) -> FitResult:
    """Epochs of mini-batch steps (by ``net``: ``trainable`` as it steps) with early
    stopping on the validation loss; each epoch checkpointed when ``checkpoint_dir`` is
    given (by rank 0 alone); the best epoch's weights kept."""
    sched = _scheduler(opt, config)
    best = _Best(copy.deepcopy(model.state_dict()))
    start, resumed_from = 1, None
    if resume:
        start = resumed_from = _resume(checkpoint_dir, run_id, model, opt, sched, gen, best)
        if best.since >= config.patience:
            start = config.epochs + 1  # it had already stopped early

    epoch = start - 1
    for epoch in range(start, config.epochs + 1):
        batch = _on_batch(on_epoch, "fit", epoch, config.epochs)
        train_loss = _epoch(net, rows, opt, gen, loss_fn, augment, config.batch_size, batch, group)
        val_loss, val_metric = _validate(trainable, *val, loss_fn, regression, group)
        lr = opt.param_groups[0]["lr"]
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val_loss)
        elif sched is not None:
            sched.step()
        report = EpochReport(epoch, config.epochs, train_loss, val_loss, val_metric, lr)
        best.history.append(report)
        if val_loss < best.loss - 1e-7:
            best.loss, best.metric, best.epoch, best.since = val_loss, val_metric, epoch, 0
            best.state = copy.deepcopy(model.state_dict())
        else:
            best.since += 1
        if checkpoint_dir is not None and group.rank == 0:
            _checkpoint(checkpoint_dir, epoch, model, opt, sched, gen, run_id, best)
        if on_epoch is not None:
            on_epoch(report)
        # Early stopping: the validation loss has not improved for `patience` epochs.
        if best.since >= config.patience:
            break
    model.load_state_dict(best.state)
    model.eval()
    return FitResult(best.epoch, epoch, best.loss, best.metric, best.history, resumed_from)


def _epoch(
    trainable: nn.Module,
    rows: Rows,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    augment: Augment | None,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
    group: DataParallel | None = None,
) -> float:
    """One pass over the training rows in shuffled mini-batches; the mean training loss
    (``on_batch(done, batches)`` after each step). In a data-parallel run every process
    draws the same order and augments the same whole batch (so their generators stay in
    step), then computes its own stride of it (``_share``)."""
    x, y, w = rows
    group = _Alone() if group is None else group
    dev = group.device
    trainable.train()
    order = torch.randperm(len(y), generator=gen)
    running, seen = 0.0, 0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        xb = x[idx]
        if augment is not None:
            xb = augment(xb, gen)
        opt.zero_grad(set_to_none=True)
        if group.size > 1:
            loss = _share(trainable, loss_fn, xb, y[idx], None if w is None else w[idx], group)
        else:
            per_row = loss_fn(trainable(_to(xb, dev)), _to(y[idx], dev))
            if w is None:
                loss = per_row.mean()
            else:
                wb = _to(w[idx], dev)
                loss = (per_row * wb).sum() / wb.sum().clamp_min(1e-12)
        loss.backward()
        opt.step()
        running += loss.item() * len(idx)
        seen += len(idx)
        if on_batch is not None:
            on_batch(i // batch_size + 1, -(-len(order) // batch_size))
    if group.size > 1:  # each process's loss was its share of the batch's, times size
        running = group.sum([running])[0] / group.size
    return running / max(seen, 1)


def _share(
    net: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    xb: torch.Tensor,
    yb: torch.Tensor,
    wb: torch.Tensor | None,
    group: DataParallel,
) -> torch.Tensor:
    """This process's part of a batch's loss: the loss of its stride of the rows, scaled
    so that the gradients DDP averages over the processes are those of the whole batch's
    (weighted) mean loss."""
    n, dev = len(yb), group.device
    mine, scale = torch.arange(group.rank, n, group.size), float(group.size)
    if len(mine) == 0:
        # A last batch of fewer rows than processes: this process steps too (DDP waits
        # for every one of them), on a row that counts for nothing.
        mine, scale = torch.arange(1), 0.0
    per_row = loss_fn(net(_to(xb[mine], dev)), _to(yb[mine], dev))
    if wb is None:
        loss: torch.Tensor = per_row.sum() * (scale / n)
    else:
        mass = float(wb.sum().clamp_min(1e-12))
        loss = (per_row * _to(wb[mine], dev)).sum() * (scale / mass)
    return loss


def _to(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    return t if device is None else t.to(device)


def _resume(
    checkpoint_dir: Path | CheckpointSlot | None,
    run_id: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: torch.Generator,
    best: _Best,
) -> int:
    """Restore an interrupted run of the same ``run_id``; the epoch to continue from."""
    if checkpoint_dir is None or not checkpoint_dir.exists():
        raise ModelError("there is no interrupted run to resume")
    ck = load_checkpoint(checkpoint_dir)
    if ck.meta.get("run_id") != run_id:
        raise ModelError(
            "the checkpoint belongs to another run (different data or settings); "
            "train without --resume to start afresh"
        )
    model.load_state_dict(ck.model)
    best.state = ck.best_model
    opt.load_state_dict(ck.optimizer)
    if sched is not None and ck.scheduler is not None:
        sched.load_state_dict(ck.scheduler)
    gen.set_state(ck.rng)
    torch.set_rng_state(ck.global_rng)
    best.loss, best.metric = ck.meta["best_loss"], ck.meta["best_metric"]
    best.epoch, best.since = ck.meta["best_epoch"], ck.meta["since_best"]
    best.history = [EpochReport(**h) for h in ck.meta["history"]]
    return ck.epoch + 1


def _checkpoint(
    folder: Path | CheckpointSlot,
    epoch: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: torch.Generator,
    run_id: str,
    best: _Best,
) -> None:
    save_checkpoint(
        folder,
        Checkpoint(
            epoch=epoch,
            model=model.state_dict(),
            best_model=best.state,
            optimizer=opt.state_dict(),
            scheduler=None if sched is None else sched.state_dict(),
            rng=gen.get_state(),
            global_rng=torch.get_rng_state(),
            meta={
                "run_id": run_id,
                "best_loss": best.loss,
                "best_metric": best.metric,
                "best_epoch": best.epoch,
                "since_best": best.since,
                "history": [asdict(h) for h in best.history],
            },
        ),
    )


def _fit_private(
    model: nn.Module,
    trainable: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    config: TrainConfig,
    *,
    regression: bool,
    augment: Augment | None,
    on_epoch: Callable[[EpochReport], None] | None,
    units: np.ndarray,
) -> FitResult:
    history: list[EpochReport] = []
    xv, yv, wv = val

    def after_epoch(epoch: int, train_loss: float) -> None:
        val_loss, val_metric = _validate(trainable, xv, yv, wv, loss_fn, regression)
        report = EpochReport(
            epoch, config.epochs, train_loss, val_loss, val_metric, opt.param_groups[0]["lr"]
        )
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)

    record = fit_private(
        trainable,
        x,
        y,
        w,
        units,
        epochs=config.epochs,
        batch_size=config.batch_size,
        loss_fn=loss_fn,
        optimizer=opt,
        generator=gen,
        delta=config.dp_delta,
        max_grad_norm=config.dp_max_grad_norm,
        epsilon=None if config.dp_noise_multiplier is not None else config.dp_epsilon,
        noise_multiplier=config.dp_noise_multiplier,
        augment=augment,
        after_epoch=after_epoch,
    )
    model.eval()
    last = history[-1]
    return FitResult(
        config.epochs, config.epochs, last.val_loss, last.val_metric, history, None, record
    )


def _fit_federated(
    model: nn.Module,
    train_part: Arrays,
    val: Arrays,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    config: TrainConfig,
    units: np.ndarray,
    *,
    regression: bool,
    augment: Augment | None,
    on_epoch: Callable[[EpochReport], None] | None,
) -> FitResult:
    """FedAvg with Flower over clients that each hold whole users (``federated.py``);
    the global model after the last round is kept, scored on the validation rows."""
    xv, yv = torch.from_numpy(val.x), torch.from_numpy(val.y)
    wv = None if val.weights is None else torch.from_numpy(np.asarray(val.weights, np.float32))
    history: list[EpochReport] = []

    def local_fit(m: nn.Module, rows: Arrays, cfg: TrainConfig) -> None:
        # ``cfg``: the round's local config (local epochs, a seed per client and round).
        # A client keeps only a sliver of its rows for its own validation: with few local
        # epochs there is little for it to choose, and the global model is scored here.
        local = dataclasses.replace(
            cfg,
            federated_clients=0,
            dp_epsilon=None,
            dp_noise_multiplier=None,
            val_fraction=min(cfg.val_fraction, 0.05),
            refit=False,
        )
        fit(m, rows, local, regression=regression, augment=augment)

    def evaluate(m: nn.Module) -> float:
        val_loss, val_metric = _validate(m, xv, yv, wv, loss_fn, regression)
        report = EpochReport(
            len(history) + 1, config.federated_rounds, math.nan, val_loss, val_metric,
            config.learning_rate,
        )  # fmt: skip
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
        return val_metric

    clients = assign_clients(units, config.federated_clients)
    result = fit_federated(
        model,
        train_part,
        clients,
        config,
        local_fit=local_fit,
        rounds=config.federated_rounds,
        local_epochs=config.local_epochs,
        evaluate=evaluate,
    )
    last = history[-1]
    return FitResult(
        config.federated_rounds,
        config.federated_rounds,
        last.val_loss,
        last.val_metric,
        history,
        None,
        result.privacy,
        {
            "clients": result.clients,
            "rounds": result.rounds,
            "local_epochs": config.local_epochs,
            "rows_per_client": result.rows_per_client,
            "strategy": "FedAvg" + (" + server-side DP (fixed clipping)" if config.private else ""),
        },
    )


@torch.no_grad()
def _validate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    regression: bool,
    group: DataParallel | None = None,
) -> tuple[float, float]:
    """(loss, metric), weighted like training: accuracy for classes, MSE for regression.

    Validation rows carry their weights too: a row the training ignores must not
    decide early stopping either. In a data-parallel run each process scores its stride
    of the rows with rank 0's buffers and the sums are shared: every process sees the
    same numbers, so all of them stop early at the same epoch.
    """
    model.eval()
    group = _Alone() if group is None else group
    dev = group.device
    if group.size > 1:
        group.sync(model)
        x, y = x[group.rank :: group.size], y[group.rank :: group.size]
        w = None if w is None else w[group.rank :: group.size]
    total, metric, mass = 0.0, 0.0, 0.0
    for i in range(0, len(y), 256):
        out = model(_to(x[i : i + 256], dev))
        yb = _to(y[i : i + 256], dev)
        wb = torch.ones(len(yb), device=yb.device) if w is None else _to(w[i : i + 256], dev)
        total += float((loss_fn(out, yb) * wb).sum())
        hits = ((out - yb) ** 2) if regression else (out.argmax(1) == yb).float()
        metric += float((hits * wb).sum())
        mass += float(wb.sum())
    if group.size > 1:
        total, metric, mass = group.sum([total, metric, mass])
    return total / max(mass, 1e-12), metric / max(mass, 1e-12)
