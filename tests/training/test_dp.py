"""User-level DP-SGD: the mechanism without noise or clipping is plain training, its ε
is Opacus' own, clipping bounds a user's influence, and a private run learns."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flywheel.errors import ModelError
from flywheel.training import TrainConfig, fit
from flywheel.training.dp import epsilon_for, plan
from tests.training.test_fit import _accuracy, _arrays, _new_model

pytest.importorskip("opacus")

# A private run trains on the training part alone (no refit on the validation rows): so
# does the plain run it is compared with.
BASE = TrainConfig(
    epochs=1,
    patience=50,
    learning_rate=5e-3,
    batch_size=10_000,
    val_fraction=0.2,
    seed=3,
    refit=False,
)


def _no_dropout(seed: int) -> torch.nn.Module:
    # Dropout masks follow the row order, which Poisson sampling does not keep.
    model = _new_model(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def test_no_noise_and_no_clipping_equals_plain_training() -> None:
    train, _ = _arrays(200, 0)
    for epochs in (1, 3):
        plain_model, private_model = _no_dropout(1), _no_dropout(1)
        config = dataclasses.replace(BASE, epochs=epochs)
        plain = fit(plain_model, train, config)
        assert plain.best_epoch == epochs  # it kept its last epoch, as a private run does
        # Full batch: Poisson sampling at rate 1 takes every user; σ = 0, C = ∞.
        private = dataclasses.replace(config, dp_noise_multiplier=0.0, dp_max_grad_norm=math.inf)
        result = fit(private_model, train, private)
        assert result.privacy is not None
        assert result.privacy.sample_rate == 1.0 and result.privacy.steps == epochs
        assert math.isinf(result.privacy.epsilon)  # no noise: no guarantee, said so
        for (name, a), b in zip(
            plain_model.state_dict().items(), private_model.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.filterwarnings("ignore:Optimal order is the")  # α grid edge: valid, looser
@pytest.mark.filterwarnings("ignore:Secure RNG turned off")  # PrivacyEngine, accountant only
@pytest.mark.parametrize(("q", "steps", "delta"), [(0.01, 1000, 1e-5), (0.1, 50, 1e-6)])
def test_epsilon_matches_opacus_own_accountant(q: float, steps: int, delta: float) -> None:
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier

    sigma = get_noise_multiplier(
        target_epsilon=3.0, target_delta=delta, sample_rate=q, steps=steps, accountant="rdp"
    )
    # What Opacus' PrivacyEngine reports after the same steps at the same rate.
    engine = PrivacyEngine(accountant="rdp")
    for _ in range(steps):
        engine.accountant.step(noise_multiplier=sigma, sample_rate=q)
    expected = engine.get_epsilon(delta)
    assert epsilon_for(sigma, q, steps, delta) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(3.0, abs=0.02)
    # plan() calibrates to the same σ from a user count and batch size.
    users = round(64 / q)
    s2, q2, steps2, eps2 = plan(
        users=users, batch_size=64, epochs=steps // round(1 / q), delta=delta, epsilon=3.0
    )
    assert (q2, steps2) == (pytest.approx(q), steps)
    assert s2 == pytest.approx(sigma, rel=1e-6)
    assert eps2 <= 3.0 + 0.02


def test_clipping_bounds_one_users_pull_however_many_rows_they_have() -> None:
    train, _ = _arrays(120, 0)
    # One user owns 90 of the rows; with C small, their many rows count as one clipped
    # gradient, so the update's norm is at most C·(users in the step)/(q·U).
    # (Units numbered below 1,000 of 10,000 fall in the validation split: three here.)
    users = np.concatenate([np.full(90, 5000), np.arange(5001, 5028), np.arange(1, 4)])
    c = 1e-3
    model = _new_model(2)
    before = [p.detach().clone() for p in model.parameters()]
    config = dataclasses.replace(
        BASE, learning_rate=1.0, dp_noise_multiplier=0.0, dp_max_grad_norm=c, val_fraction=0.1
    )
    # SGD-like check: Adam normalises steps, so look at the gradient the optimiser saw.
    seen: list[float] = []
    orig_step = torch.optim.Adam.step

    def spy(self: torch.optim.Adam, *a: object, **k: object) -> object:
        g = torch.sqrt(sum((p.grad**2).sum() for grp in self.param_groups for p in grp["params"]))
        seen.append(float(g))
        return orig_step(self, *a, **k)

    torch.optim.Adam.step = spy  # type: ignore[method-assign]
    try:
        result = fit(model, train, config, users=users)
    finally:
        torch.optim.Adam.step = orig_step  # type: ignore[method-assign]
    assert result.privacy is not None
    # 120 rows minus the three validation users'; the 90-row user is one unit of 28.
    assert result.privacy.users == 28 and result.privacy.rows == 117
    assert seen and max(seen) <= c * 1.0001  # every unit clipped to c, averaged over units
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_private_run_learns_and_reports_the_target_epsilon() -> None:
    train, holdout = _arrays(1200, 400)
    model = _new_model(0)
    config = dataclasses.replace(
        BASE,
        epochs=10,
        batch_size=200,
        dp_epsilon=8.0,
        dp_max_grad_norm=0.5,
        learning_rate=2e-2,
        val_fraction=0.1,
    )
    result = fit(model, train, config)
    rec = result.privacy
    assert rec is not None and rec.accountant == "rdp" and rec.sampling == "poisson"
    assert rec.epsilon == pytest.approx(8.0, abs=0.1) and rec.epsilon <= 8.0 + 0.08
    assert rec.noise_multiplier > 0.3 and rec.delta == 1e-5
    assert result.epochs_run == 10  # no early stopping under DP
    assert _accuracy(model, holdout) > 0.6  # 10 classes: chance is 0.1 (0.79 measured)


def test_bad_privacy_parameters_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="dp_epsilon must be > 0"):
        TrainConfig(dp_epsilon=0.0)
    with pytest.raises(ValueError, match="dp_delta"):
        TrainConfig(dp_epsilon=1.0, dp_delta=1.5)
    with pytest.raises(ValueError, match="finite dp_max_grad_norm"):
        TrainConfig(dp_epsilon=1.0, dp_max_grad_norm=math.inf)
    with pytest.raises(ModelError, match="at least one user"):
        plan(users=0, batch_size=1, epochs=1, delta=1e-5, epsilon=1.0)


def test_a_recurrent_model_is_refused_with_the_layer_named() -> None:
    from flywheel.data import Arrays
    from flywheel.models import ModelSpec, create_model, default_hparams

    shape = (20, 8)
    spec = ModelSpec(
        arch="lstm_audio",
        task="audio-classification",
        input_shape=shape,
        labels=("a", "b"),
        hparams=default_hparams("lstm_audio", shape),
    )
    rng = np.random.default_rng(0)
    data = Arrays(rng.random((20, *shape), dtype=np.float32), rng.integers(0, 2, 20), ["a", "b"])
    with pytest.raises(ModelError, match="this one has LSTM"):
        fit(create_model(spec), data, TrainConfig(epochs=1, dp_epsilon=3.0))


def test_the_noise_cannot_be_replayed_from_the_recorded_seed() -> None:
    train, _ = _arrays(200, 0)
    config = dataclasses.replace(BASE, epochs=2, batch_size=50, dp_epsilon=3.0)
    a, b = _no_dropout(4), _no_dropout(4)
    fit(a, train, config)
    fit(b, train, config)  # same data, same seed, same initial weights
    assert any(
        not torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_leaving_a_user_out_moves_no_one_else_across_the_split() -> None:
    from flywheel.training.fit import split_units

    rng = np.random.default_rng(0)
    units = rng.integers(0, 2**40, size=60).repeat(3)  # 60 users, 3 rows each
    _, val = split_units(units, 0.15)
    val_users = set(units[val].tolist())
    for gone in units[::3][:10]:
        rest = units[units != gone]
        _, v = split_units(rest, 0.15)
        assert set(rest[v].tolist()) == val_users - {int(gone)}


def test_a_bad_privacy_option_is_one_clear_error(tmp_path: Path) -> None:
    from flywheel.errors import ConfigError
    from tests.factories import make_project

    project = make_project(tmp_path / "p", train=False)
    with pytest.raises(ConfigError, match="invalid training option: dp_epsilon must be > 0"):
        project.train_config(dp_epsilon=0.0)
