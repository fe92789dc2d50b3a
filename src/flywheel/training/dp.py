"""DP-SGD with a *user*-level guarantee: Opacus' per-sample gradients and its RDP
accountant, with users (not rows) as the unit that is sampled, clipped and noised.

The mechanism, per step (Abadi et al. 2016, applied to users as in McMahan et al.
2018, "Learning differentially private recurrent language models"):

1. every user is included independently with probability ``q = batch_size / users``
   (Poisson sampling: the assumption the RDP accountant's subsampling bound makes);
2. each included user's gradient is the mean of the per-row gradients of their rows
   (Opacus' ``GradSampleModule`` computes those), clipped to L2 norm ``C``;
3. the clipped user gradients are summed, Gaussian noise ``N(0, (σC)²)`` is added,
   and the sum is divided by the expected number of users ``q·U``; the optimiser
   (Adam with the run's weight decay) steps on that.

Adding or removing *all* rows of one user changes one clipped term, so the
accountant's (ε, δ) — RDP of the sampled Gaussian mechanism, ``q``, ``σ`` and the
number of steps, converted at δ — is a guarantee about users. Rows with no user id
(imported data) each count as a user of one row, so on such data this is exactly
Opacus' record-level DP-SGD. Opacus alone accounts per row and per run (user-level
privacy is its open request #366); the ledger (``flywheel.privacy.ledger``) composes across runs.

The noise and the Poisson draws come from a generator seeded from the operating
system's randomness for each run and never recorded: with the run's recorded seed
anyone could regenerate the noise and subtract it. (So a private run is not
repeatable; the model's initial weights and everything else still follow the seed.)

What it does not cover: the rows held out for validation are only reported (a
private run trains every epoch and keeps the last one — choosing the best epoch or
stopping early on validation data would spend privacy outside the accountant);
held-out evaluation; and floating-point side channels of the Gaussian sampler
(Opacus' ``secure_mode`` with torchcsprng addresses those; not used here).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.errors import ConfigError, ModelError

__all__ = ["ACCOUNTANT", "PrivacyRecord", "epsilon_for", "fit_private", "plan"]

ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class PrivacyRecord:
    """What a private run spent, recorded with the model version."""

    epsilon: float  # what the accountant reports after the run
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    epochs: int
    users: int  # sampling units in the training rows (users; rows without a user count 1)
    rows: int
    target_epsilon: float | None = None
    accountant: str = ACCOUNTANT
    sampling: str = "poisson"
    unit: str = "user"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if math.isinf(self.epsilon):
            out["epsilon"] = None  # JSON has no infinity: no guarantee
        return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Opacus' known, harmless warnings: the accountant's search touching the edge of
    its α grid (the bound stays valid, only looser), and the full backward hook firing
    on a first layer whose input needs no gradient."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def _opacus() -> Any:
    try:
        import opacus
    except ImportError as exc:  # pragma: no cover - opacus is in the [privacy] extra
        raise ConfigError(
            "differentially private training needs Opacus: pip install 'flywheel-ml[privacy]'"
        ) from exc
    return opacus


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of ``steps`` sampled Gaussian steps under Opacus' RDP accountant (inf at σ = 0)."""
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    _opacus()
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with _quiet():
        return float(acc.get_epsilon(delta=delta))


def plan(
    *,
    users: int,
    batch_size: int,
    epochs: int,
    delta: float,
    epsilon: float | None = None,
    noise_multiplier: float | None = None,
) -> tuple[float, float, int, float]:
    """(σ, q, steps, ε): calibrate σ to a target ε, or compute ε for a given σ."""
    if users < 1:
        raise ModelError("a private run needs at least one user's rows to train on")
    if not 0 < delta < 1:
        raise ConfigError(f"dp delta must be in (0, 1); got {delta}")
    q = min(1.0, batch_size / users)
    steps = epochs * max(1, round(1 / q))
    if noise_multiplier is None:
        if epsilon is None or epsilon <= 0:
            raise ConfigError(f"dp epsilon must be > 0; got {epsilon}")
        from opacus.accountants.utils import get_noise_multiplier

        _opacus()
        with _quiet():
            noise_multiplier = float(get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=q,
                steps=steps,
                accountant=ACCOUNTANT,
            ))  # fmt: skip
    elif noise_multiplier < 0:
        raise ConfigError(f"dp noise multiplier must be >= 0; got {noise_multiplier}")
    return noise_multiplier, q, steps, epsilon_for(noise_multiplier, q, steps, delta)


#: Layers whose per-sample gradients torch's expanded weights compute directly (as fast
#: as a plain backward pass here: 5.5 against 4.6 ms a batch of 128 on seed_cnn, where
#: Opacus' default hooks take 19 ms).
_EXPANDED_WEIGHTS_OK = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


class _PerSample:
    """Per-row gradients materialised (torch's expanded weights through Opacus), averaged
    per user, one clip per user: works whatever the users' row counts."""

    def __init__(self, model: nn.Module, clip: float) -> None:
        self.clip = clip
        _opacus()
        from opacus.grad_sample import GradSampleModuleExpandedWeights

        self.gsm = GradSampleModuleExpandedWeights(model, batch_first=True, loss_reduction="sum")
        self.params = [p for p in self.gsm.parameters() if p.requires_grad]

    def clipped_sum(
        self, per_row: Callable[[nn.Module], torch.Tensor], row_units: torch.Tensor
    ) -> tuple[list[torch.Tensor], float]:
        losses = per_row(self.gsm)
        losses.sum().backward()
        n = len(row_units)
        users_in, slot = torch.unique(row_units, return_inverse=True)
        grads = [p.grad_sample.reshape(n, -1) for p in self.params]
        if len(users_in) < n:  # some user has several rows here: average them
            count = torch.bincount(slot, minlength=len(users_in)).float()
            mean = torch.zeros(len(users_in), n)
            mean[slot, torch.arange(n)] = 1.0 / count[slot]
            grads = [mean @ g for g in grads]
        norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g, dim=1) for g in grads]), dim=0
        )
        factor = (self.clip / (norms + 1e-6)).clamp(max=1.0)
        out = [(factor @ g).reshape(p.shape) for g, p in zip(grads, self.params, strict=True)]
        for p in self.params:
            p.grad_sample = None
        return out, float(losses.detach().sum())

    def close(self) -> None:
        pass  # expanded weights leave no hooks on the model


class _Ghost:
    """Every user has one row: Opacus' ghost clipping — per-row gradient norms without
    materialising per-row gradients (a second backward pass on the loss reweighted by
    the clipping factors gives the clipped sum directly). Memory and time stay near a
    plain step's where per-row gradients of a wide layer would not."""

    def __init__(self, model: nn.Module, clip: float) -> None:
        _opacus()
        from opacus.grad_sample import GradSampleModuleFastGradientClipping

        self.gsm = GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="sum",
            max_grad_norm=clip,
            use_ghost_clipping=True,
        )
        self.params = [p for p in self.gsm.parameters() if p.requires_grad]

    def clipped_sum(
        self, per_row: Callable[[nn.Module], torch.Tensor], row_units: torch.Tensor
    ) -> tuple[list[torch.Tensor], float]:
        losses = per_row(self.gsm)
        losses.sum().backward(retain_graph=True)  # the hooks record per-row norms
        factor = self.gsm.get_clipping_coef()
        for p in self.params:
            p.grad = None
        self.gsm.disable_hooks()
        try:
            (factor.detach() * losses).sum().backward()
        finally:
            self.gsm.enable_hooks()
        out = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p in self.params:
            p.grad = None
        return out, float(losses.detach().sum())

    def close(self) -> None:
        self.gsm._close()


def _mechanism(model: nn.Module, clip: float, one_row_each: bool) -> _PerSample | _Ghost:
    odd = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))
            and not isinstance(m, _EXPANDED_WEIGHTS_OK)
        }
    )
    if odd:
        raise ModelError(
            f"DP-SGD here supports models whose trainable layers are Linear, Conv, "
            f"Embedding or normalisation layers; this one has {', '.join(odd)} (per-sample "
            "gradients of a recurrent layer need Opacus' DPLSTM); train it without "
            "--dp-epsilon"
        )
    if one_row_each:
        try:
            return _Ghost(model, clip)
        except NotImplementedError:  # a layer ghost clipping cannot handle
            pass
    return _PerSample(model, clip)


def fit_private(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    units: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    delta: float,
    max_grad_norm: float,
    epsilon: float | None = None,
    noise_multiplier: float | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    after_epoch: Callable[[int, float], None] | None = None,
) -> PrivacyRecord:
    """Train ``model`` (the trainable part) in place with user-level DP-SGD.

    ``units[i]`` is the user of row ``i`` (any integers); ``optimizer`` steps on the
    noised mean of clipped user gradients. Runs every epoch (no early stopping).
    """
    if max_grad_norm <= 0:
        raise ConfigError(f"dp max grad norm must be > 0; got {max_grad_norm}")
    uniq, inverse = np.unique(units, return_inverse=True)
    n_users = len(uniq)
    sigma, q, steps, eps = plan(
        users=n_users,
        batch_size=batch_size,
        epochs=epochs,
        delta=delta,
        epsilon=epsilon,
        noise_multiplier=noise_multiplier,
    )
    row_user = torch.from_numpy(inverse.astype(np.int64))
    steps_per_epoch = steps // epochs
    # Secret randomness for the mechanism (see the module docstring); the caller's
    # generator still drives augmentation.
    secret = torch.Generator().manual_seed(secrets.randbits(63))
    one_row_each = len(uniq) == len(units)
    with _quiet():
        _steps(
            _mechanism(model, max_grad_norm, one_row_each), x, y, w, row_user, optimizer,
            secret, loss_fn, augment_generator=generator,
            sigma=sigma, q=q, clip=max_grad_norm, epochs=epochs, per_epoch=steps_per_epoch,
            augment=augment, after_epoch=after_epoch,
        )  # fmt: skip
    return PrivacyRecord(
        epsilon=eps,
        delta=delta,
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        sample_rate=q,
        steps=steps,
        epochs=epochs,
        users=n_users,
        rows=len(units),
        target_epsilon=epsilon if noise_multiplier is None else None,
    )


def _steps(
    mech: _PerSample | _Ghost,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    row_user: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    sigma: float,
    q: float,
    clip: float,
    epochs: int,
    per_epoch: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    after_epoch: Callable[[int, float], None] | None,
    augment_generator: torch.Generator | None = None,
) -> None:
    """The DP-SGD steps (see the module docstring); ``generator``: the secret one."""
    n_users = int(row_user.max()) + 1
    params = mech.params
    denom = q * n_users  # the expected number of users in a step
    try:
        for epoch in range(1, epochs + 1):
            mech.gsm.train()
            running, seen = 0.0, 0
            for _ in range(per_epoch):
                chosen = torch.rand(n_users, generator=generator) < q
                rows = torch.nonzero(chosen[row_user]).flatten()
                optimizer.zero_grad(set_to_none=True)
                if len(rows):
                    xb = x[rows]
                    if augment is not None:
                        xb = augment(xb, augment_generator or generator)

                    def per_row(
                        m: nn.Module, xb: torch.Tensor = xb, rows: torch.Tensor = rows
                    ) -> torch.Tensor:
                        losses = loss_fn(m(xb), y[rows])
                        return losses if w is None else losses * w[rows]

                    total, loss_sum = mech.clipped_sum(per_row, row_user[rows])
                    running += loss_sum
                    seen += len(rows)
                else:
                    total = [torch.zeros_like(p) for p in params]
                for t, p in zip(total, params, strict=True):
                    if sigma > 0:
                        t = t + torch.normal(0.0, sigma * clip, size=p.shape, generator=generator)
                    p.grad = t / denom
                optimizer.step()
            if after_epoch is not None:
                after_epoch(epoch, running / max(seen, 1))
    finally:
        mech.close()
