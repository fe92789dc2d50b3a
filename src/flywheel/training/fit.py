"""The fit loop: cross-entropy, Adam with weight decay, early stopping on a validation split."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.data.datasets import Arrays

__all__ = ["EpochReport", "FitResult", "TrainConfig", "fit", "predict_proba", "seed_everything"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved whole with every model version."""

    arch: str = "seed_cnn"
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.25
    patience: int = 5
    val_fraction: float = 0.15
    seed: int = 0
    warm_start: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    best_val_accuracy: float
    history: list[EpochReport] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def split_validation(data: Arrays, fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """A seeded, stratified train/validation split of the training rows."""
    from sklearn.model_selection import train_test_split

    n = len(data)
    n_val = max(1, round(n * fraction))
    counts = np.bincount(data.y)
    counts = counts[counts > 0]
    stratify = data.y if counts.min() >= 2 and n_val >= len(counts) else None
    tr, va = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)
    tr.sort()
    va.sort()

    def take(idx: np.ndarray) -> Arrays:
        w = None if data.weights is None else data.weights[idx]
        return Arrays(x=data.x[idx], y=data.y[idx], labels=data.labels, weights=w)

    return take(tr), take(va)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[i : i + batch_size]))
        out.append(torch.softmax(logits, dim=1).numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


@torch.no_grad()
def _evaluate(model: nn.Module, data: Arrays, loss_fn: nn.Module) -> tuple[float, float]:
    model.eval()
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    total, correct, n = 0.0, 0, 0
    for i in range(0, len(y), 512):
        logits = model(x[i : i + 512])
        total += float(loss_fn(logits, y[i : i + 512])) * len(logits)
        correct += int((logits.argmax(1) == y[i : i + 512]).sum())
        n += len(logits)
    return total / max(n, 1), correct / max(n, 1)


def fit(
    model: nn.Module,
    train: Arrays,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> FitResult:
    """Train ``model`` in place; it ends with the weights of its best validation epoch."""
    gen = seed_everything(config.seed)
    train_part, val = split_validation(train, config.val_fraction, config.seed)
    x = torch.from_numpy(train_part.x)
    y = torch.from_numpy(train_part.y)
    loss_fn = nn.CrossEntropyLoss()
    # Adam's weight_decay is the L2 penalty of the seed (section 2.1).
    opt = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    best_state = copy.deepcopy(model.state_dict())
    best_loss, best_acc, best_epoch, since_best = math.inf, 0.0, 0, 0
    history: list[EpochReport] = []
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        running, seen = 0.0, 0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        val_loss, val_acc = _evaluate(model, val, loss_fn)
        report = EpochReport(epoch, config.epochs, running / max(seen, 1), val_loss, val_acc)
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
        if val_loss < best_loss - 1e-6:
            best_loss, best_acc, best_epoch, since_best = val_loss, val_acc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            # Early stopping: the validation loss has not improved for `patience` epochs.
            if since_best >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch, epoch, best_loss, best_acc, history)
