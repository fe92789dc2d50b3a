"""cifar10-mini with the seed's Keras CNN (`seed_cnn`, 64x64x3): accuracy and training speed.

    .venv/bin/python benchmarks/cifar_seed_cnn.py [--epochs 10] [--arms bare,flywheel,augment]

Arms, all in one run, on the same decoded tensors (64x64 RGB in [0, 1], batch 32, Adam 1e-3):
- ``bare``: a hand-written PyTorch loop over all training images (the same-run baseline);
- ``flywheel``: `flywheel.training.fit` (validation split, early stopping, checkpoints);
- ``augment``: the same with kornia augmentation (rotation, flip, scale).

Each prints test accuracy on ``cifar10-mini/test`` and seconds per epoch, and the ratio of
its time per training image to the bare loop's. The seed's own Keras code is the outside
reference (not run here: TensorFlow is not a dependency): 0.503 test accuracy in 78 s on
this kind of machine, per the issue that asked for this benchmark.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flywheel.data import ImageCodec, ImageFolderSource
from flywheel.models import arch_info, build_spec, create_model
from flywheel.training import TrainConfig, fit, image_augment, predict_proba, seed_everything

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-mini"
KERAS_ACCURACY, KERAS_SECONDS = 0.503, 78.0


def load(
    split: str, codec: ImageCodec, params: dict[str, object]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    source = ImageFolderSource(DATA / split)
    examples = list(source)
    labels = source.classes
    x = codec.decode_batch([e.content for e in examples], params)
    y = np.array([labels.index(str(e.label)) for e in examples], dtype=np.int64)
    return x, y, labels


def bare_loop(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int
) -> list[float]:
    """The plain loop a person would write: shuffle, forward, cross-entropy, Adam step."""
    gen = seed_everything(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return times


class EpochClock:
    """Seconds between epoch reports (validation and checkpoint included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.last = time.perf_counter()

    def __call__(self, _report: object) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict_proba(model, x).argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="bare,flywheel,augment")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"cifar10-mini not found at {DATA}")
    torch.set_num_threads(2)

    codec = ImageCodec()
    native = {"kind": "image", "mode": "RGB", "height": 32, "width": 32}
    params = arch_info("seed_cnn").preprocess(native, {})
    t = time.perf_counter()
    x_train, y_train, labels = load("train", codec, params)
    x_test, y_test, _ = load("test", codec, params)
    decode_s = time.perf_counter() - t
    spec = build_spec("seed_cnn", task="image-classification", native=native, labels=labels)
    shape = spec.input_shape
    print(
        f"cifar10-mini: {len(y_train)} train, {len(y_test)} test, input {shape}, "
        f"decoded in {decode_s:.1f}s; {args.epochs} epochs, batch 32"
    )

    results: dict[str, dict[str, float]] = {}
    arms = args.arms.split(",")
    if "bare" in arms:
        seed_everything(args.seed)
        model = create_model(spec)
        times = bare_loop(model, x_train, y_train, args.epochs, args.seed)
        results["bare"] = {
            "accuracy": accuracy(model, x_test, y_test),
            "s_per_epoch": float(np.median(times)),
            "train_images": len(y_train),
        }
    for arm in ("flywheel", "augment"):
        if arm not in arms:
            continue
        from flywheel.data import Arrays

        config = TrainConfig(
            epochs=args.epochs,
            batch_size=32,
            learning_rate=1e-3,
            weight_decay=0.0,
            patience=args.epochs,
            val_fraction=0.1,
            seed=args.seed,
            augment=arm == "augment",
        )
        seed_everything(args.seed)
        model = create_model(spec)
        tick = EpochClock()
        with tempfile.TemporaryDirectory() as tmp:
            fit(
                model,
                Arrays(x_train, y_train, labels),
                config,
                augment=image_augment() if config.augment else None,
                on_epoch=tick,
                checkpoint_dir=Path(tmp) / "ck",
                run_id="bench",
            )
        results[arm] = {
            "accuracy": accuracy(model, x_test, y_test),
            "s_per_epoch": float(np.median(tick.times)),
            "train_images": round(len(y_train) * (1 - config.val_fraction)),
        }

    base = results.get("bare")
    print(f"{'arm':<12}{'test acc':>10}{'s/epoch':>10}{'ms/image':>10}{'vs bare':>9}")
    print(
        f"{'keras (ref)':<12}{KERAS_ACCURACY:>10.3f}{KERAS_SECONDS / 10:>10.2f}"
        f"{KERAS_SECONDS / 10 / 5000 * 1000:>10.3f}{'':>9}"
    )
    for arm, r in results.items():
        per_image = r["s_per_epoch"] / r["train_images"]
        r["ms_per_image"] = per_image * 1000
        ratio = per_image / (base["s_per_epoch"] / base["train_images"]) if base else float("nan")
        r["time_ratio_vs_bare"] = ratio
        print(
            f"{arm:<12}{r['accuracy']:>10.3f}{r['s_per_epoch']:>10.2f}"
            f"{r['ms_per_image']:>10.3f}{ratio:>9.3f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "cifar_seed_cnn",
                "epochs": args.epochs,
                "seed": args.seed,
                "keras_reference_accuracy": KERAS_ACCURACY,
                "arms": results,
            }
        )
    )


if __name__ == "__main__":
    main()
