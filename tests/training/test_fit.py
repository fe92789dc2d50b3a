"""The fit loop on real digits: it learns, stops early, and keeps its best epoch."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from flywheel.data import Arrays, ImagePreprocessing, decode_image
from flywheel.models import ModelSpec, build_spec, create_model, default_hparams
from flywheel.training import EpochReport, FitResult, TrainConfig, fit, predict_proba
from tests.factories import digits_subset

LABELS = [str(d) for d in range(10)]
PREP = ImagePreprocessing(mode="L", height=8, width=8)
# The search alone (early stopping on the validation split); the refit has its own tests.
CONFIG = TrainConfig(
    epochs=8,
    patience=3,
    learning_rate=5e-3,
    batch_size=16,
    val_fraction=0.2,
    seed=0,
    refit=False,
)


def _arrays(n_train: int, n_holdout: int) -> tuple[Arrays, Arrays]:
    examples = digits_subset(n_train, n_holdout)
    x = np.stack([decode_image(e.content, PREP) for e in examples])
    y = np.array([LABELS.index(e.label) for e in examples], dtype=np.int64)
    return (
        Arrays(x=x[:n_train], y=y[:n_train], labels=LABELS),
        Arrays(x=x[n_train:], y=y[n_train:], labels=LABELS),
    )


def _new_model(seed: int = 0) -> nn.Module:
    spec = ModelSpec(
        arch="seed_cnn",
        task="image-classification",
        input_shape=(1, 8, 8),
        labels=tuple(LABELS),
        hparams=default_hparams("seed_cnn", (1, 8, 8)),
    )
    torch.manual_seed(seed)
    return create_model(spec)


def _accuracy(model: nn.Module, data: Arrays) -> float:
    return float((predict_proba(model, data.x).argmax(1) == data.y).mean())


@dataclass
class Run:
    model: nn.Module
    result: FitResult
    reports: list[EpochReport]
    snapshots: list[dict[str, torch.Tensor]]
    accuracy_before: float
    accuracy_after: float


@pytest.fixture(scope="module")
def digits() -> tuple[Arrays, Arrays]:
    return _arrays(200, 100)


@pytest.fixture(scope="module")
def run(digits: tuple[Arrays, Arrays]) -> Run:
    train, heldout = digits
    model = _new_model()
    before = _accuracy(model, heldout)
    reports: list[EpochReport] = []
    snapshots: list[dict[str, torch.Tensor]] = []

    def on_epoch(report: EpochReport) -> None:
        reports.append(report)
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    result = fit(model, train, CONFIG, on_epoch=on_epoch)
    return Run(model, result, reports, snapshots, before, _accuracy(model, heldout))


def test_fit_improves_accuracy_over_the_untrained_model(run: Run) -> None:
    assert run.accuracy_before < 0.2  # ten classes: chance
    assert run.accuracy_after >= 0.6
    assert run.accuracy_after - run.accuracy_before >= 0.4
    assert run.result.best_val_accuracy >= 0.6


def test_fit_reports_every_epoch_in_order(run: Run) -> None:
    history = run.result.history
    assert run.reports == history
    assert [r.epoch for r in history] == list(range(1, run.result.epochs_run + 1))
    assert all(r.epochs == CONFIG.epochs for r in history)
    assert history[-1].train_loss < history[0].train_loss


def test_fit_ends_with_the_weights_of_its_best_validation_epoch(run: Run) -> None:
    result = run.result
    val_losses = [r.val_loss for r in result.history]
    # The run must go past its best epoch for this test to tell anything.
    assert result.best_epoch < result.epochs_run
    assert result.best_val_loss == min(val_losses)
    assert result.best_epoch == val_losses.index(min(val_losses)) + 1
    assert result.best_val_accuracy == result.history[result.best_epoch - 1].val_accuracy

    final = run.model.state_dict()
    best = run.snapshots[result.best_epoch - 1]
    last = run.snapshots[-1]
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert any(not torch.equal(final[k], last[k]) for k in final)
    assert not run.model.training


def _without_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def test_refit_trains_on_every_row_for_the_best_epoch_count(
    digits: tuple[Arrays, Arrays],
) -> None:
    """The refit is the search's start trained again on training + validation rows for
    best_epoch epochs at the search's learning rates: computed here by hand (full batch,
    so the row order cannot matter) and compared weight by weight."""
    train, _ = digits
    config = TrainConfig(
        epochs=6, patience=2, learning_rate=5e-3, batch_size=10_000, val_fraction=0.2, seed=0,
        lr_schedule="cosine",
    )  # fmt: skip
    model = _without_dropout(_new_model(1))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    reports: list[EpochReport] = []
    result = fit(model, train, config, on_epoch=reports.append)

    search = [r for r in reports if r.phase == "fit"]
    refit = [r for r in reports if r.phase == "refit"]
    assert search == result.history and reports == search + refit
    assert [r.epoch for r in refit] == list(range(1, result.best_epoch + 1))
    # Each refit epoch ran at the learning rate its search epoch had (a cosine schedule).
    assert [r.lr for r in refit] == [h.lr for h in result.history[: result.best_epoch]]
    assert len({r.lr for r in refit}) == len(refit)
    assert result.refit_rows == len(train)

    by_hand = _without_dropout(_new_model(1))
    by_hand.load_state_dict(start)
    opt = torch.optim.Adam(by_hand.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    for h in result.history[: result.best_epoch]:
        for g in opt.param_groups:
            g["lr"] = h.lr
        by_hand.train()
        opt.zero_grad()
        nn.functional.cross_entropy(by_hand(x), y).backward()
        opt.step()
    # The same function: probabilities within 1e-3 on every row. Not weight by weight:
    # Adam steps a coordinate by about the learning rate whatever its gradient's size,
    # so a gradient at rounding level (the fit's rows come shuffled, the sums in another
    # order) moves it by +-lr one way or the other — on one machine 7e-3 apart on a
    # weight the loss does not feel, on another 1e-7.
    model.eval()
    by_hand.eval()
    with torch.no_grad():
        ours, theirs = model(x).softmax(1), by_hand(x).softmax(1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)


def test_a_refit_run_repeats_exactly(digits: tuple[Arrays, Arrays]) -> None:
    train, _ = digits
    config = dataclasses.replace(CONFIG, refit=True, epochs=3)
    a, b = _new_model(2), _new_model(2)
    fit(a, train, config)
    fit(b, train, config)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_early_stopping_stops_before_epochs_when_validation_stalls(
    digits: tuple[Arrays, Arrays],
) -> None:
    train, _ = digits
    config = TrainConfig(epochs=10, patience=1, learning_rate=1e-10, batch_size=64, seed=0)
    result = fit(_new_model(), train, config)
    assert result.epochs_run == 2 < config.epochs
    assert len(result.history) == 2
    assert result.best_epoch == 1


def test_train_config_json_round_trip() -> None:
    config = TrainConfig(
        arch="seed_cnn",
        epochs=7,
        batch_size=5,
        learning_rate=0.02,
        weight_decay=0.0,
        dropout=0.5,
        patience=2,
        val_fraction=0.3,
        seed=42,
        warm_start=False,
        refit=False,
    )
    data = config.to_json()
    assert set(data) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig(**json.loads(json.dumps(data))) == config
    assert TrainConfig(**TrainConfig().to_json()) == TrainConfig()
    # A version recorded before the refit existed reads back with today's default.
    older = {k: v for k, v in data.items() if k != "refit"}
    assert TrainConfig.from_json(older).refit is True


def test_the_refit_setting_and_option_reach_the_config(tmp_path: Path) -> None:
    from flywheel.settings import Settings
    from flywheel.training import train_config

    assert train_config(Settings.load(tmp_path)).refit is True
    assert train_config(Settings.load(tmp_path, refit=False)).refit is False
    assert train_config(Settings.load(tmp_path), refit=False).refit is False


def test_row_weights_let_training_ignore_rows() -> None:
    """Rows of weight 0 (say, from an untrusted user) do not teach the model their labels."""
    from flywheel.data import digits_arrays
    from flywheel.models import create_model
    from flywheel.training import predict_proba, seed_everything

    images, labels = digits_arrays()
    x = (images[:, None, :, :] / 255.0).astype(np.float32)
    y = labels.astype(np.int64)
    train, test = slice(0, 600), slice(1200, 1797)
    rng = np.random.default_rng(0)
    noisy = y[train].copy()
    flipped = rng.random(len(noisy)) < 0.4
    noisy[flipped] = (noisy[flipped] + 1) % 10  # a consistent, targeted flip

    spec = build_spec(
        "seed_cnn",
        task="image-classification",
        native={"kind": "image", "mode": "L", "height": 8, "width": 8},
        labels=tuple(map(str, range(10))),
        options={"image_size": 8},
    )
    config = TrainConfig(epochs=15, patience=15, seed=0)

    def accuracy(weights: np.ndarray | None) -> float:
        seed_everything(0)
        model = create_model(spec)
        data = Arrays(x=x[train], y=noisy, labels=list(spec.labels), weights=weights)
        fit(model, data, config)
        return float((predict_proba(model, x[test]).argmax(1) == y[test]).mean())

    equal = accuracy(None)
    ignoring = accuracy(np.where(flipped, 0.0, 1.0))
    assert ignoring > equal + 0.1
    # Weights are relative: scaling them all changes nothing but rounding.
    assert accuracy(np.full(600, 3.0)) == pytest.approx(equal, abs=0.01)
