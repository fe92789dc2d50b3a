"""ONNX export on digits: fp32 against dynamic int8 against static int8 (calibrated).

    .venv/bin/python benchmarks/export_quantization.py [--epochs 20] [--seed 0] [--repeats 50]

One project on all of sklearn's digits (8x8, seed_cnn): a fixed held-out split (20%,
seeded), the rest for training; v1 trained for ``--epochs``. Then `Project.export` writes
three bundles of v1 (fp32, ``int8``, ``int8-static``; static calibrates on a seeded
sample of at most 256 train rows) and each is run with `OnnxBundle` (ONNX Runtime alone,
the CPU provider with its default threads) on the held-out rows decoded by the bundle's
own codec. Per bundle: the model file's bytes, the held-out accuracy, and the median
time per sample of ``--repeats`` runs of the whole held-out set as one batch (after
warm-up), and of ``20 * --repeats`` single-row runs (latency at batch 1).

Baseline: eager PyTorch on the same version, loaded through flywheel
(`flywheel.registry.load_artifact` on v1's artifact folder), in eval mode under
``torch.no_grad()``, fed the very same decoded held-out array (raw logits, like
`OnnxBundle.run`). Torch and the three bundles are timed in interleaved rounds (each
round runs every engine once, in rotating order), so that a change in the machine's load
hits them all alike; each bundle's time is also given as a ratio to torch's.

Two thread settings, timed one after the other (ratios compare within a setting):
``default`` -- ONNX Runtime sessions as `OnnxBundle.load` makes them
(``intra_op_num_threads=0``: ORT picks one thread per physical core) and torch at
``torch.get_num_threads()`` as found at start (also one per physical core by default);
and ``1 thread`` -- ORT sessions with ``intra_op_num_threads=1`` and
``torch.set_num_threads(1)``.

Targets printed with a verdict: ONNX Runtime (fp32 graph) per-sample time at most 0.3x
eager PyTorch -- the verdict is on batch 1, what a lone request pays, and also given for
the batched run; and each int8 bundle's held-out accuracy within 1 point (0.01) of the
fp32 bundle's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN, ListSource, RawExample, digits_arrays, encode_png
from flywheel.export.runtime import OnnxBundle
from flywheel.registry import load_artifact

MODES: tuple[str | None, ...] = (None, "int8", "int8-static")
ORT_TARGET = 0.3  # ONNX Runtime fp32 per-sample time at most this times eager torch
ACCURACY_TARGET = 0.01  # int8 held-out accuracy within 1 point of fp32

Runner = Callable[[np.ndarray], object]


def torch_runner(model: nn.Module) -> Runner:
    """Eager forward in eval mode, no autograd: raw logits, as `OnnxBundle.run` gives."""
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = model(torch.from_numpy(x)).numpy()
        return out

    return run


def pinned(bundle: OnnxBundle, threads: int) -> OnnxBundle:
    """The same bundle with an ORT session limited to ``threads`` intra-op threads."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads
    session = ort.InferenceSession(
        str(bundle.folder / bundle.manifest["model"]),
        sess_options=so,
        providers=["CPUExecutionProvider"],
    )
    return dataclasses.replace(bundle, session=session)


def interleaved_ms_per_sample(runners: list[Runner], x: np.ndarray, repeats: int) -> list[float]:
    """Median milliseconds per sample of each runner on ``x`` as one batch."""
    for run in runners:
        for _ in range(10):
            run(x)
    times: list[list[float]] = [[] for _ in runners]
    for r in range(repeats):
        for j in np.roll(np.arange(len(runners)), r):
            t = time.perf_counter()
            runners[j](x)
            times[j].append(time.perf_counter() - t)
    return [float(np.median(t)) / len(x) * 1000 for t in times]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


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
    contents = [e.content for e in holdout]
    results: list[dict[str, Any]] = []
    default_threads = torch.get_num_threads()
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
        version = trained.model.version
        model, _ = load_artifact(Path(trained.model.artifact_dir))
        bundles = []
        x: np.ndarray | None = None
        for mode in MODES:
            t = time.perf_counter()
            manifest = project.export(version, root / str(mode), quantize=mode)
            export_s = time.perf_counter() - t
            bundle = OnnxBundle.load(root / str(mode))
            bundles.append(bundle)
            xb = bundle.codec.decode_batch(contents, bundle.spec["preprocessing"])
            if x is None:
                x = xb
            elif not np.array_equal(x, xb):
                raise SystemExit(f"bundle {mode} decodes the held-out rows differently")
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
        assert x is not None
        run_torch = torch_runner(model)
        torch_logits = np.asarray(run_torch(x))
        labels = np.array(bundles[0].labels)
        fp32_logits = bundles[0].run(x)
        torch_row: dict[str, Any] = {
            "mode": "torch",
            "version": version,
            "accuracy": float((labels[torch_logits.argmax(1)] == y).mean()),
            "accuracy_recorded": torch_accuracy,
            "argmax_agreement_fp32_onnx": float(
                (torch_logits.argmax(1) == fp32_logits.argmax(1)).mean()
            ),
            "max_abs_diff_fp32_onnx": float(np.abs(torch_logits - fp32_logits).max()),
        }
        settings: list[tuple[str, int, list[OnnxBundle]]] = [
            ("default", default_threads, bundles),
            ("1thread", 1, [pinned(b, 1) for b in bundles]),
        ]
        for key, torch_threads, engines in settings:
            torch.set_num_threads(torch_threads)
            runners: list[Runner] = [run_torch, *(b.run for b in engines)]
            batched = interleaved_ms_per_sample(runners, x, args.repeats)
            single = interleaved_ms_per_sample(runners, x[:1], args.repeats * 20)
            sfx = "" if key == "default" else "_1thread"
            torch_row[f"ms_per_sample_batched{sfx}"] = batched[0]
            torch_row[f"ms_batch1{sfx}"] = single[0]
            for r, ms, ms1 in zip(results, batched[1:], single[1:], strict=True):
                r[f"ms_per_sample_batched{sfx}"], r[f"ms_batch1{sfx}"] = ms, ms1
                r[f"vs_torch_batched{sfx}"] = ms / batched[0]
                r[f"vs_torch_batch1{sfx}"] = ms1 / single[0]
        torch.set_num_threads(default_threads)
        project.close()

    fp32 = results[0]
    for r in results:
        r["accuracy_delta_vs_fp32"] = r["accuracy"] - fp32["accuracy"]
    print(
        f"digits: {len(examples) - len(holdout)} train / {len(holdout)} held-out rows, seed_cnn "
        f"v{version} {trained.model.metrics['epochs_run']} epochs ({train_s:.0f} s), torch "
        f"accuracy {torch_accuracy:.4f} recorded, {torch_row['accuracy']:.4f} on the decoded "
        f"held-out array; torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
    )
    print(
        f"threads: default = ORT intra_op_num_threads=0 (ORT's own pick: one per physical "
        f"core) and torch.get_num_threads()={default_threads} at start; 1thread = ORT "
        f"intra_op_num_threads=1 and torch.set_num_threads(1)"
    )
    print(
        f"torch vs fp32 ONNX on the same array: argmax agreement "
        f"{torch_row['argmax_agreement_fp32_onnx']:.4f}, max |logit diff| "
        f"{torch_row['max_abs_diff_fp32_onnx']:.2e}"
    )
    print()
    print(f"{'engine':<13}{'bytes':>9}{'size':>7}{'accuracy':>10}{'agree':>8}{'d acc (pts)':>13}")
    print(f"{'torch':<13}{'-':>9}{'-':>7}{torch_row['accuracy']:>10.4f}{'-':>8}{'-':>13}")
    for r in results:
        print(
            f"{r['mode']:<13}{r['bytes']:>9}{r['bytes'] / fp32['bytes']:>7.3f}"
            f"{r['accuracy']:>10.4f}{r['argmax_agreement']:>8.4f}"
            f"{r['accuracy_delta_vs_fp32'] * 100:>+13.2f}"
        )
    n = len(holdout)
    for key, label in (("", "default threads"), ("_1thread", "1 thread")):
        print()
        print(
            f"timing, {label}: median of {args.repeats} runs at batch {n}, "
            f"{args.repeats * 20} at batch 1; interleaved"
        )
        print(
            f"{'engine':<13}{'ms/sample (batch ' + str(n) + ')':>24}{'x torch':>9}"
            f"{'ms (batch 1)':>14}{'x torch':>9}"
        )
        print(
            f"{'torch':<13}{torch_row['ms_per_sample_batched' + key]:>24.5f}{1:>9.3f}"
            f"{torch_row['ms_batch1' + key]:>14.4f}{1:>9.3f}"
        )
        for r in results:
            print(
                f"{r['mode']:<13}{r['ms_per_sample_batched' + key]:>24.5f}"
                f"{r['vs_torch_batched' + key]:>9.3f}{r['ms_batch1' + key]:>14.4f}"
                f"{r['vs_torch_batch1' + key]:>9.3f}"
            )

    verdicts: dict[str, Any] = {}
    print()
    print(
        f"target: ONNX Runtime (fp32 graph) per-sample time <= {ORT_TARGET}x eager PyTorch; "
        f"verdict on batch 1 (what a lone request pays), batched also given"
    )
    for key, label in (("", "default threads"), ("_1thread", "1 thread")):
        for what, name in (("batch1", "batch 1"), ("batched", f"batch {n}")):
            ratio = fp32[f"vs_torch_{what}{key}"]
            ok = ratio <= ORT_TARGET
            verdicts[f"ort_fp32_vs_torch_{what}{key}"] = {"ratio": ratio, "pass": ok}
            tag = "  <- verdict" if what == "batch1" and key == "" else ""
            print(f"  {name:<11} {label:<16} {ratio:6.3f}x  {verdict(ok)}{tag}")
    print(
        f"target: int8 held-out accuracy within {ACCURACY_TARGET * 100:.0f} point of fp32 "
        f"(fp32 ONNX {fp32['accuracy']:.4f}; one row = {100 / n:.2f} points)"
    )
    for r in results[1:]:
        delta = r["accuracy_delta_vs_fp32"]
        ok = abs(delta) <= ACCURACY_TARGET + 1e-12
        verdicts[f"accuracy_{r['mode']}"] = {"delta": delta, "pass": ok}
        print(f"  {r['mode']:<13} {r['accuracy']:.4f}  {delta * 100:+.2f} points  {verdict(ok)}")
    print(
        json.dumps(
            {
                "benchmark": "export_quantization",
                "threads": {"torch_default": default_threads, "ort_default": "0 (ORT's pick)"},
                "torch": torch_row,
                "results": results,
                "verdicts": verdicts,
            }
        )
    )


if __name__ == "__main__":
    main()
