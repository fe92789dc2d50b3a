"""Federated against centralised training on the spoken digits, one client per speaker.

    .venv/bin/python benchmarks/federated_fsdd.py [--rounds 30] [--local-epochs 1] [--dp-epsilon 8]

The same 2,000 recordings train both (a stratified 20% of every speaker's recordings is
held out, split seed 0, as in ``audio_fsdd.py``); ``lstm_audio``, batch 64, Adam 3e-3:

- ``centralised``: flywheel's fit loop on all training rows (cosine schedule, early
  stopping, up to 30 epochs) — the same-run baseline;
- ``federated``: Flower's FedAvg (``flywheel.training.federated``: Flower's server loop
  and strategy in this process), five clients — george, jackson, lucas, nicolas, theo —
  each training ``--local-epochs`` on its own speaker's rows per round;
- ``federated-dp`` (with ``--dp-epsilon``): the same with Flower's server-side DP
  (each client's update clipped, Gaussian noise on the average), ε from Opacus' RDP
  accountant at client level.

Each arm prints held-out accuracy, its ratio to the centralised arm, and seconds.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from audio_fsdd import load_fsdd, lstm_spec

from flywheel.data import Arrays
from flywheel.models import create_model
from flywheel.training import TrainConfig, fit, predict_proba

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fsdd" / "recordings"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--dp-epsilon", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=FSDD)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Secure RNG")
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        raise SystemExit(f"FSDD not found at {args.data}")

    x, y, labels, speakers, params = load_fsdd(args.data)
    names = sorted(set(speakers.tolist()))
    from sklearn.model_selection import train_test_split

    strata = np.array([f"{lab}/{u}" for lab, u in zip(y, speakers, strict=True)])
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=strata)
    tr, te = np.sort(tr), np.sort(te)
    train = Arrays(x[tr], y[tr], labels)
    units = np.array([names.index(s) for s in speakers[tr]])
    spec = lstm_spec(labels, params, 0.25)
    base = TrainConfig(
        arch="lstm_audio",
        epochs=30,
        batch_size=64,
        learning_rate=3e-3,
        patience=8,
        seed=args.seed,
        lr_schedule="cosine",
    )
    arms: dict[str, dict[str, Any]] = {}

    def run(name: str, config: TrainConfig) -> None:
        torch.manual_seed(args.seed)
        model = create_model(spec)
        start = time.perf_counter()
        result = fit(model, train, config, users=units)
        seconds = time.perf_counter() - start
        acc = float((predict_proba(model, x[te]).argmax(1) == y[te]).mean())
        arm: dict[str, Any] = {"accuracy": round(acc, 4), "seconds": round(seconds, 1)}
        if result.federated is not None:
            arm["clients"] = result.federated["clients"]
            arm["rows_per_client"] = result.federated["rows_per_client"]
            arm["rounds"] = result.federated["rounds"]
        else:
            arm["epochs_run"] = result.epochs_run
        if result.privacy is not None:
            arm["epsilon"] = round(result.privacy.epsilon, 3)
            arm["sigma"] = round(result.privacy.noise_multiplier, 3)
        if "centralised" in arms:
            arm["ratio_to_centralised"] = round(acc / arms["centralised"]["accuracy"], 3)
        arms[name] = arm
        print(f"  {name:13s} {json.dumps(arm)}", flush=True)

    print(
        f"{len(y)} recordings, speakers {names}; train {len(tr)} / held out {len(te)}; "
        f"{args.rounds} rounds x {args.local_epochs} local epoch(s)"
    )
    run("centralised", base)
    fed = TrainConfig.from_json(
        {
            **base.to_json(),
            "lr_schedule": "none",
            "federated_clients": len(names),
            "federated_rounds": args.rounds,
            "local_epochs": args.local_epochs,
        }
    )
    run("federated", fed)
    if args.dp_epsilon is not None:
        run(
            "federated-dp",
            TrainConfig.from_json(
                {**fed.to_json(), "dp_epsilon": args.dp_epsilon, "dp_max_grad_norm": 1.0}
            ),
        )
    print(json.dumps({"benchmark": "federated_fsdd", "arms": arms}, sort_keys=True))


if __name__ == "__main__":
    main()
