"""Federated training with Flower: FedAvg over clients that each hold a group of users.

Flower's own server loop (``flwr.server.Server``), client manager and strategy
(``FedAvg``, optionally wrapped in ``DifferentialPrivacyServerSideFixedClipping``) run
in this process; each client is a ``ClientProxy`` that trains on its own rows with
flywheel's fit loop. No Ray and no network: this is simulation on one machine, the
way to measure what federation costs before clients are real devices.

Each round every client starts from the global weights, trains ``local_epochs`` on its
rows, and sends its weights back; FedAvg averages them weighted by row count. With
DP, the server clips each client's update to ``C``, adds Gaussian noise ``σC/n`` to
the average, and Opacus' RDP accountant gives ε for ``σ`` over the rounds (every
client takes part in every round: sampling rate 1). A user's rows all sit in one
client, so the guarantee covers each user.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.data.datasets import Arrays
from flywheel.errors import ConfigError, ModelError
from flywheel.training.dp import ACCOUNTANT, PrivacyRecord, epsilon_for

__all__ = ["FederatedResult", "assign_clients", "fit_federated"]

RoundFn = Callable[[int, int, float], None]


@dataclass
class FederatedResult:
    rounds: int
    clients: int
    rows_per_client: list[int]
    history: list[dict[str, float]]
    privacy: PrivacyRecord | None = None


def _flwr() -> Any:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import flwr
    except ImportError as exc:
        raise ConfigError(
            "federated training needs Flower: pip install 'flywheel-ml[federated]'"
        ) from exc
    logging.getLogger("flwr").setLevel(logging.WARNING)
    return flwr


def assign_clients(units: np.ndarray, n_clients: int) -> np.ndarray:
    """Client of each row: units (users) in order of first appearance, dealt round-robin,
    so a user's rows stay together and clients get about as many users each."""
    if n_clients < 2:
        raise ConfigError(f"federated training needs at least 2 clients; got {n_clients}")
    order: dict[int, int] = {}
    for u in units.tolist():
        order.setdefault(u, len(order))
    if len(order) < n_clients:
        raise ModelError(
            f"{n_clients} clients need at least as many users; the training rows have {len(order)}"
        )
    return np.array([order[u] % n_clients for u in units.tolist()], dtype=np.int64)


def _get(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def _set(model: nn.Module, arrays: list[np.ndarray]) -> None:
    keys = list(model.state_dict().keys())
    model.load_state_dict(
        {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays, strict=True)}
    )


def fit_federated(
    model: nn.Module,
    train: Arrays,
    clients: np.ndarray,
    config: Any,
    *,
    local_fit: Callable[[nn.Module, Arrays, Any], None],
    rounds: int,
    local_epochs: int,
    evaluate: Callable[[nn.Module], float] | None = None,
    on_round: RoundFn | None = None,
) -> FederatedResult:
    """Run ``rounds`` of FedAvg with Flower; ``model`` ends with the global weights.

    ``local_fit(model, rows, config)`` trains one client's copy in place (flywheel's fit
    loop with ``epochs = local_epochs``); ``evaluate(model)`` scores the global model
    after each round (the server-side evaluation, e.g. validation accuracy).
    """
    _flwr()
    from flwr.common import parameters_to_ndarrays
    from flwr.server import Server, SimpleClientManager

    if rounds < 1 or local_epochs < 1:
        raise ConfigError("federated training needs rounds >= 1 and local epochs >= 1")
    ids = sorted(set(clients.tolist()))
    shards = {c: np.flatnonzero(clients == c) for c in ids}
    local_config = dataclasses.replace(config, epochs=local_epochs, patience=local_epochs)
    history: list[dict[str, float]] = []

    def train_client(cid: int, weights: list[np.ndarray], rnd: int) -> tuple[list[Any], int]:
        """One client's round: a copy of the global model trained on its rows; (its
        weights, how much it counts in the average)."""
        rows = shards[cid]
        local = _clone(model)
        _set(local, weights)
        part = Arrays(
            x=train.x[rows],
            y=train.y[rows],
            labels=train.labels,
            weights=None if train.weights is None else train.weights[rows],
        )
        seed = config.seed + 1000 * rnd + cid
        local_fit(local, part, dataclasses.replace(local_config, seed=seed))
        # Under DP every client weighs the same: weighting by rows would let a big
        # client's clipped update outweigh the noise calibrated per client.
        return _get(local), 1 if config.private else len(rows)

    def server_eval(rnd: int, arrays: list[np.ndarray], _cfg: dict[str, Any]) -> Any:
        if evaluate is None or rnd == 0:
            return None
        glob = _clone(model)
        _set(glob, arrays)
        score = float(evaluate(glob))
        history.append({"round": rnd, "val_metric": score})
        if on_round is not None:
            on_round(rnd, rounds, score)
        return 0.0, {"val_metric": score}

    strategy = _fedavg(len(ids), _get(model), server_eval)
    privacy = None
    if config.private:
        strategy, privacy = _private(strategy, config, rounds, len(ids), len(clients))
    manager = SimpleClientManager()
    client = _client_type()
    for c in ids:
        manager.register(client(str(c), train_client))
    server = Server(client_manager=manager, strategy=strategy)
    server.set_max_workers(1)  # clients train one after another: repeatable, no contention
    server.fit(num_rounds=rounds, timeout=None)
    _set(model, parameters_to_ndarrays(server.parameters))
    model.eval()
    return FederatedResult(
        rounds=rounds,
        clients=len(ids),
        rows_per_client=[len(shards[c]) for c in ids],
        history=history,
        privacy=privacy,
    )


TrainClient = Callable[[int, list[np.ndarray], int], tuple[list[Any], int]]


def _client_type() -> Any:
    """Flower's client proxy for a client in this process (``train_client`` runs its
    round)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_proxy import ClientProxy

    class Client(ClientProxy):
        """One client in this process: trains a copy of the global model on its rows."""

        def __init__(self, cid: str, train_client: TrainClient) -> None:
            super().__init__(cid)
            self.train_client = train_client

        def fit(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
            rnd = int(ins.config.get("round", 0))
            weights, n = self.train_client(
                int(self.cid), parameters_to_ndarrays(ins.parameters), rnd
            )
            return FitRes(
                status=Status(code=Code.OK, message=""),
                parameters=ndarrays_to_parameters(weights),
                num_examples=n,
                metrics={},
            )

        def get_properties(self, *a: Any, **k: Any) -> Any:  # pragma: no cover - unused
            raise NotImplementedError

        def get_parameters(self, *a: Any, **k: Any) -> Any:  # pragma: no cover - unused
            raise NotImplementedError

        def evaluate(self, *a: Any, **k: Any) -> Any:  # pragma: no cover - fraction 0
            raise NotImplementedError

        def reconnect(self, *a: Any, **k: Any) -> Any:  # pragma: no cover - unused
            raise NotImplementedError

    return Client


def _fedavg(n: int, initial: list[np.ndarray], server_eval: Callable[..., Any]) -> Any:
    """FedAvg over all ``n`` clients every round, evaluated on the server."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    class OrderedFedAvg(FedAvg):
        """FedAvg over the clients' results in client order, not in the order they
        finished: the average's floating-point sums, hence the run, repeat."""

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            ordered = sorted(results, key=lambda r: int(r[0].cid))
            return super().aggregate_fit(server_round, ordered, failures)

    return OrderedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(initial),
        evaluate_fn=server_eval,
        on_fit_config_fn=lambda rnd: {"round": rnd},
        fit_metrics_aggregation_fn=lambda _m: {},
    )


def _private(
    strategy: Any, config: Any, rounds: int, n: int, rows: int
) -> tuple[Any, PrivacyRecord]:
    """``strategy`` with Flower's server-side fixed clipping and noise, and its ε."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping

    sigma = config.dp_noise_multiplier
    if sigma is None:
        from opacus.accountants.utils import get_noise_multiplier

        sigma = float(
            get_noise_multiplier(
                target_epsilon=config.dp_epsilon,
                target_delta=config.dp_delta,
                sample_rate=1.0,
                steps=rounds,
                accountant=ACCOUNTANT,
            )
        )
    # Removing a user changes their client's update (the client stays): a replacement,
    # sensitivity 2C on the sum, so Flower gets twice the σ the add/remove accountant
    # was calibrated for.

    class SafeClipping(DifferentialPrivacyServerSideFixedClipping):
        """Flower divides each update by its norm to clip it: a client that returns
        exactly the weights it was sent (its training kept its start) would divide by
        zero. Such an update is zero; clipping leaves it zero — say so in numbers."""

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            start = self.current_round_params
            for _proxy, res in results:
                arrays = parameters_to_ndarrays(res.parameters)
                if all(np.array_equal(a, b) for a, b in zip(arrays, start, strict=True)):
                    first = arrays[0].copy()  # one step to the next float: norm > 0
                    first.flat[0] = np.nextafter(first.flat[0], np.inf)
                    arrays[0] = first
                    res.parameters = ndarrays_to_parameters(arrays)
            return super().aggregate_fit(server_round, results, failures)

    clipped = SafeClipping(
        strategy,
        noise_multiplier=2 * sigma,
        clipping_norm=config.dp_max_grad_norm,
        num_sampled_clients=n,
    )
    privacy = PrivacyRecord(
        epsilon=epsilon_for(sigma, 1.0, rounds, config.dp_delta),
        delta=config.dp_delta,
        noise_multiplier=2 * sigma,
        max_grad_norm=config.dp_max_grad_norm,
        sample_rate=1.0,
        steps=rounds,
        epochs=rounds,
        users=n,
        rows=rows,
        target_epsilon=config.dp_epsilon if config.dp_noise_multiplier is None else None,
        sampling="all clients every round",
        unit="client",
    )
    # Flower draws its noise from numpy's global generator: seed it from the operating
    # system, never from the run's recorded seed (which would let anyone replay it).
    np.random.seed(secrets.randbits(32))
    return clipped, privacy


def _clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
