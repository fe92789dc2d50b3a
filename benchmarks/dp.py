"""Differentially private training: accuracy at ε = 1, 3, 8 (δ = 1e-5) and the slowdown.

    .venv/bin/python benchmarks/dp.py [--data digits,cifar] [--epsilons 1,3,8] [--seed 0]

Arms per dataset, all in one run on the same tensors and the same model architecture:

- ``plain``: flywheel's default recipe (batch 32, Adam 1e-3, early stopping) — the
  accuracy a non-private model reaches;
- ``plain-same``: non-private at the DP arms' batch size, learning rate and epochs (no
  early stopping) — the same-run baseline for time per epoch;
- ``dp-ε``: user-level DP-SGD (``flywheel.training.dp``: Poisson sampling, per-user
  clipping at C, Gaussian noise, Opacus' RDP accountant) at each ε. On these data no
  row has a user, so each row is its own unit: this is record-level DP-SGD, the
  setting of Opacus' own figures (96.8% on MNIST at ε = 3 with a larger model and
  60,000 images).

Each DP arm prints its accuracy on the held-out rows, the accountant's ε after the
run, σ, and its seconds per epoch as a ratio to ``plain-same`` (target ≤ 2x).

digits: scikit-learn's 1,797 8x8 digits, a stratified 20% held out (seed 0), ``seed_cnn``
at 8x8. cifar: ``../shared/datasets/cifar10-mini`` (4,000 train / 1,000 test), ``seed_cnn``
at 32x32.
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

from flywheel.data import Arrays, ImageCodec, ImageFolderSource, digits_arrays, encode_png
from flywheel.models import build_spec, create_model
from flywheel.training import TrainConfig, fit, predict_proba, seed_everything

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-mini"
#: The DP arms' recipe per dataset: large batches, a higher learning rate, C = 1.
RECIPES = {
    "digits": {"batch_size": 128, "learning_rate": 1e-2, "epochs": 40, "dp_max_grad_norm": 1.0},
    "cifar": {"batch_size": 256, "learning_rate": 2e-3, "epochs": 20, "dp_max_grad_norm": 1.0},
}


def load_digits(seed: int) -> tuple[Arrays, Arrays, dict[str, Any]]:
    from sklearn.model_selection import train_test_split

    images, labels = digits_arrays()
    codec = ImageCodec()
    native = {"kind": "image", "mode": "L", "height": 8, "width": 8}
    spec = build_spec(
        "seed_cnn",
        task="image-classification",
        native=native,
        labels=tuple(str(d) for d in range(10)),
        options={"image_size": 8},
    )
    x = codec.decode_batch([encode_png(im) for im in images], spec.preprocessing)
    y = np.asarray(labels, dtype=np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
    names = [str(d) for d in range(10)]
    return Arrays(x[tr], y[tr], names), Arrays(x[te], y[te], names), {"spec": spec}


def load_cifar() -> tuple[Arrays, Arrays, dict[str, Any]]:
    codec = ImageCodec()
    native = {"kind": "image", "mode": "RGB", "height": 32, "width": 32}
    out = []
    labels: list[str] = []
    for split in ("train", "test"):
        source = ImageFolderSource(DATA / split)
        examples = list(source)
        labels = source.classes
        spec = build_spec(
            "seed_cnn",
            task="image-classification",
            native=native,
            labels=tuple(labels),
            options={"image_size": 32},
        )
        x = codec.decode_batch([e.content for e in examples], spec.preprocessing)
        y = np.array([labels.index(str(e.label)) for e in examples], dtype=np.int64)
        out.append(Arrays(x, y, labels))
    return out[0], out[1], {"spec": spec}


class Clock:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.last = time.perf_counter()

    def __call__(self, _r: object) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def run_arm(
    spec: Any, train: Arrays, test: Arrays, config: TrainConfig, seed: int
) -> dict[str, Any]:
    seed_everything(seed)
    model = create_model(spec)
    clock = Clock()
    result = fit(model, train, config, on_epoch=clock)
    acc = float((predict_proba(model, test.x).argmax(1) == test.y).mean())
    out: dict[str, Any] = {
        "accuracy": round(acc, 4),
        "epochs_run": result.epochs_run,
        # the first epoch carries one-off costs (hooks, allocations): median of the rest
        "s_per_epoch": round(float(np.median(clock.times[1:] or clock.times)), 4),
    }
    if result.privacy is not None:
        p = result.privacy
        out |= {
            "epsilon": round(p.epsilon, 4),
            "delta": p.delta,
            "sigma": round(p.noise_multiplier, 4),
            "q": round(p.sample_rate, 5),
            "steps": p.steps,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="digits,cifar")
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Secure RNG")
    torch.set_num_threads(2)
    report: dict[str, Any] = {}
    for name in args.data.split(","):
        if name == "cifar" and not DATA.is_dir():
            print(f"cifar: skipped ({DATA} not found)")
            continue
        train, test, extra = load_digits(args.seed) if name == "digits" else load_cifar()
        spec = extra["spec"]
        recipe = RECIPES[name]
        print(f"{name}: {len(train)} train / {len(test)} test, {spec.arch} {spec.input_shape}")
        arms: dict[str, dict[str, Any]] = {}
        plain = TrainConfig(epochs=40, batch_size=32, seed=args.seed, val_fraction=0.1)
        arms["plain"] = run_arm(spec, train, test, plain, args.seed)
        same = TrainConfig(
            epochs=recipe["epochs"],
            batch_size=recipe["batch_size"],
            learning_rate=recipe["learning_rate"],
            patience=10_000,
            seed=args.seed,
            val_fraction=0.1,
        )
        arms["plain-same"] = run_arm(spec, train, test, same, args.seed)
        for eps in (float(e) for e in args.epsilons.split(",")):
            config = TrainConfig.from_json(
                {
                    **same.to_json(),
                    "dp_epsilon": eps,
                    "dp_delta": args.delta,
                    "dp_max_grad_norm": recipe["dp_max_grad_norm"],
                }
            )
            arm = run_arm(spec, train, test, config, args.seed)
            arm["slowdown_vs_plain_same"] = round(
                arm["s_per_epoch"] / arms["plain-same"]["s_per_epoch"], 2
            )
            arms[f"dp-{eps:g}"] = arm
        for k, v in arms.items():
            print(f"  {k:11s} {json.dumps(v)}")
        report[name] = {"recipe": recipe, "arms": arms}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
