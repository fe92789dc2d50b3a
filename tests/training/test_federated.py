"""Federated training with Flower: users stay in one client, FedAvg averages the clients
by rows, the result learns, and it enters the registry and the gate like any run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from flywheel.errors import ConfigError, ModelError
from flywheel.training import TrainConfig, fit
from tests.training.test_fit import _accuracy, _arrays, _new_model

pytest.importorskip("flwr")

from flywheel.training.federated import assign_clients, fit_federated


def test_clients_hold_whole_users_dealt_round_robin() -> None:
    units = np.array([7, 7, 3, 9, 3, 7, 1, 9])
    clients = assign_clients(units, 2)
    for u in set(units.tolist()):
        assert len(set(clients[units == u].tolist())) == 1  # a user's rows stay together
    assert clients.tolist() == [0, 0, 1, 0, 1, 0, 1, 0]  # users 7→0, 3→1, 9→0, 1→1
    with pytest.raises(ConfigError, match="at least 2 clients"):
        assign_clients(units, 1)
    with pytest.raises(ModelError, match="at least as many users"):
        assign_clients(units, 5)


def test_one_round_of_fedavg_is_the_row_weighted_mean_of_the_clients() -> None:
    train, _ = _arrays(90, 0)
    clients = np.array([0] * 60 + [1] * 30)
    model = _new_model(0)
    local: dict[int, list[torch.Tensor]] = {}

    def local_fit(m: nn.Module, rows: object, cfg: TrainConfig) -> None:
        # A deterministic "training": each client moves every weight by its own amount.
        n = len(rows)  # type: ignore[arg-type]
        with torch.no_grad():
            for p in m.parameters():
                p.add_(float(n))
        local[n] = [p.detach().clone() for p in m.parameters()]

    before = [p.detach().clone() for p in model.parameters()]
    result = fit_federated(
        model, train, clients, TrainConfig(seed=0), local_fit=local_fit, rounds=1, local_epochs=1
    )
    assert result.rows_per_client == [60, 30] and result.clients == 2
    for b, a in zip(before, model.parameters(), strict=True):
        # (60·(b+60) + 30·(b+30)) / 90 = b + 50
        torch.testing.assert_close(a.detach(), b + 50.0)


def test_a_federated_run_learns_and_reports_its_clients() -> None:
    train, holdout = _arrays(600, 300)
    users = np.arange(len(train)) % 12  # twelve users, dealt to three clients
    config = TrainConfig(
        epochs=1,
        learning_rate=5e-3,
        batch_size=32,
        seed=0,
        federated_clients=3,
        federated_rounds=6,
        local_epochs=2,
    )
    model = _new_model(0)
    seen: list[float] = []
    result = fit(model, train, config, users=users, on_epoch=lambda r: seen.append(r.val_metric))
    assert result.federated is not None
    assert result.federated["clients"] == 3 and result.federated["rounds"] == 6
    assert sum(result.federated["rows_per_client"]) == round(600 * 0.85)
    assert len(seen) == 6 and result.epochs_run == 6
    assert _accuracy(model, holdout) > 0.8


def test_federated_with_dp_reports_the_accountants_epsilon() -> None:
    pytest.importorskip("opacus")
    from flywheel.training.dp import epsilon_for

    train, _ = _arrays(200, 0)
    config = TrainConfig(
        epochs=1,
        seed=0,
        federated_clients=2,
        federated_rounds=3,
        dp_epsilon=8.0,
        dp_max_grad_norm=1.0,
    )
    result = fit(_new_model(0), train, config, users=np.arange(len(train)) % 4)
    p = result.privacy
    assert p is not None and p.unit == "client" and p.steps == 3 and p.sample_rate == 1.0
    # Flower adds twice the accountant's σ: removing a user replaces one client's update.
    assert p.epsilon == pytest.approx(epsilon_for(p.noise_multiplier / 2, 1.0, 3, 1e-5))
    assert p.epsilon <= 8.0 + 0.1
    assert result.federated is not None and "DP" in result.federated["strategy"]


def test_train_federated_from_the_cli_enters_the_registry_and_the_gate(tmp_path: Path) -> None:
    from flywheel.cli import app
    from flywheel.data import digits_arrays
    from tests.factories import digit_png, make_project

    project = make_project(tmp_path / "p", settings={"max_user_share": 1.0})
    labels = digits_arrays()[1]
    for n, i in enumerate(range(300, 340)):
        user = f"user{n % 4}"
        p = project.predict(digit_png(i), user_id=user)
        project.record_feedback(p.prediction_id, label=str(labels[i]), user_id=user)
    project.curate()
    r = CliRunner().invoke(
        app,
        [
            "train",
            "-p",
            str(project.settings.project_dir),
            "--federated",
            "--clients",
            "2",
            "--rounds",
            "2",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    fed = out["metrics"]["federated"]
    # Base rows have no user: each is a unit of its own, dealt among the clients too.
    assert fed["clients"] == 2 and fed["rounds"] == 2
    assert out["champion_version"] == 1 and out["reason"]  # gated against production
    info = project.version_info(out["model_version"])
    assert info.training_config["federated_clients"] == 2
    assert dataclasses.asdict(TrainConfig.from_json(info.training_config))["local_epochs"] == 1


def test_each_client_trains_the_local_epochs_not_the_global_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    module = sys.modules["flywheel.training.fit"]
    real = module.fit
    local_epochs: list[int] = []

    def spy(model: nn.Module, data: object, config: TrainConfig, **kw: object) -> object:
        if not config.federated_clients:
            local_epochs.append(config.epochs)
            assert config.dp_epsilon is None and config.val_fraction <= 0.05
        return real(model, data, config, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "fit", spy)
    train, _ = _arrays(120, 0)
    config = TrainConfig(epochs=30, seed=0, federated_clients=2, federated_rounds=2, local_epochs=2)
    spy(_new_model(0), train, config, users=np.arange(len(train)) % 4)
    assert local_epochs == [2, 2, 2, 2]  # two clients, two rounds, two epochs each


def test_a_federated_run_repeats_to_the_bit() -> None:
    train, _ = _arrays(240, 0)
    config = TrainConfig(epochs=1, seed=0, federated_clients=3, federated_rounds=2)
    runs = []
    for _ in range(2):
        model = _new_model(0)
        fit(model, train, config, users=np.arange(len(train)) % 6)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_federated_dp_survives_a_client_that_returns_its_start() -> None:
    pytest.importorskip("opacus")
    import flywheel.training.federated as federated

    train, _ = _arrays(120, 0)
    model = _new_model(0)
    config = TrainConfig(seed=0, federated_clients=2, dp_epsilon=8.0, dp_max_grad_norm=1.0)
    # A client whose training kept its start: its update is exactly zero (Flower's
    # clipping divides by the update's norm).
    result = federated.fit_federated(
        model,
        train,
        np.arange(len(train)) % 2,
        config,
        local_fit=lambda m, rows, cfg: None,
        rounds=2,
        local_epochs=1,
    )
    assert result.privacy is not None and result.rounds == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
