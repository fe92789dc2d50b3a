"""ONNX export on digits: fp32 against dynamic int8 against static int8 (calibrated).

    .venv/bin/python benchmarks/export_quantization.py [--epochs 20] [--seed 0] [--repeats 50]

One project on all of sklearn's digits (8x8, seed_cnn): a fixed held-out split (20%,
seeded), the rest for training; v1 trained for ``--epochs``. Then `Project.export` writes
three bundles of v1 (fp32, ``int8``, ``int8-static``; static calibrates on a seeded
sample of at most 256 train rows) and each is run with `OnnxBundle` (ONNX Runtime alone,
the CPU provider with its default threads) on the held-out rows decoded by the bundle's
own codec. Per bundle: the model file's bytes, the held-out accuracy, and the median
time per sample of ``--repeats`` runs of the whole held-out set as one batch (after
warm-up), and of single-row runs (latency at batch 1). The bundles are timed in
interleaved rounds (each round runs every bundle once, in rotating order), so that a
change in the machine's load hits them all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN, ListSource, RawExample, digits_arrays, encode_png
from flywheel.export.runtime import OnnxBundle

MODES: tuple[str | None, ...] = (None, "int8", "int8-static")


def interleaved_ms_per_sample(
    bundles: list[OnnxBundle], x: np.ndarray, repeats: int
) -> list[float]:
    """Median milliseconds per sample of each bundle on ``x`` as one batch."""
    for b in bundles:
        for _ in range(3):
            b.run(x)
    times: list[list[float]] = [[] for _ in bundles]
    for r in range(repeats):
        for j in np.roll(np.arange(len(bundles)), r):
            t = time.perf_counter()
            bundles[j].run(x)
            times[j].append(time.perf_counter() - t)
    return [float(np.median(t)) / len(x) * 1000 for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=50, help="timed runs per bundle")
    args = ap.parse_args()

    images, labels = digits_arrays()
    order = np.random.default_rng(args.seed).permutation(len(images))
    held = set(order[: len(images) // 5].tolist())
    examples = [
        RawExample(
            encode_png(images[i]),
            str(labels[i]),
            split=HOLDOUT if i in held else TRAIN,
            source_path=f"digits[{i}]",
        )
        for i in range(len(images))
    ]
    holdout = [e for e in examples if e.split == HOLDOUT]
    y = np.array([e.label for e in holdout])
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project = Project.init(
            root / "p",
            ListSource("digits", examples),
            settings={"image_size": 8, "epochs": args.epochs, "seed": args.seed},
        )
        t = time.perf_counter()
        trained = project.train()
        train_s = time.perf_counter() - t
        torch_accuracy = float(trained.model.metrics["accuracy"])
        bundles = []
        for mode in MODES:
            t = time.perf_counter()
            manifest = project.export(1, root / str(mode), quantize=mode)
            export_s = time.perf_counter() - t
            bundle = OnnxBundle.load(root / str(mode))
            bundles.append(bundle)
            x = bundle.codec.decode_batch(
                [e.content for e in holdout], bundle.spec["preprocessing"]
            )
            got = np.array(bundle.labels)[bundle.run(x).argmax(1)]
            results.append(
                {
                    "mode": mode or "fp32",
                    "file": manifest["model"],
                    "bytes": manifest["bytes"],
                    "accuracy": float((got == y).mean()),
                    "accuracy_recorded": manifest["parity"]["accuracy_onnx"],
                    "argmax_agreement": manifest["parity"]["argmax_agreement"],
                    "max_abs_diff": manifest["parity"]["max_abs_diff"],
                    "calibration_rows": manifest.get("calibration_rows"),
                    "export_s": export_s,
                }
            )
        batched = interleaved_ms_per_sample(bundles, x, args.repeats)
        single = interleaved_ms_per_sample(bundles, x[:1], args.repeats * 20)
        for r, ms, ms1 in zip(results, batched, single, strict=True):
            r["ms_per_sample_batched"], r["ms_batch1"] = ms, ms1
        project.close()

    print(
        f"digits: {len(examples) - len(holdout)} train / {len(holdout)} held-out rows, seed_cnn "
        f"{trained.model.metrics['epochs_run']} epochs ({train_s:.0f} s), torch accuracy "
        f"{torch_accuracy:.4f}; onnxruntime {ort.__version__}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()})"
    )
    head = f"{'bundle':<13}{'bytes':>9}{'ratio':>7}{'accuracy':>10}{'agree':>8}"
    print(head + f"{'ms/sample (batch ' + str(len(holdout)) + ')':>24}{'ms (batch 1)':>14}")
    fp32 = results[0]
    for r in results:
        print(
            f"{r['mode']:<13}{r['bytes']:>9}{r['bytes'] / fp32['bytes']:>7.3f}"
            f"{r['accuracy']:>10.4f}{r['argmax_agreement']:>8.4f}"
            f"{r['ms_per_sample_batched']:>24.5f}{r['ms_batch1']:>14.4f}"
        )
    print(json.dumps({"benchmark": "export_quantization", "results": results}))


if __name__ == "__main__":
    main()
