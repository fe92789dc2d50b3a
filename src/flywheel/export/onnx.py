"""Exporting a model version to ONNX (pinned opset, dynamic batch axis), with a parity check.

The bundle holds ``model.onnx`` (or ``model.int8.onnx``), ``spec.json`` (labels and
preprocessing) and ``manifest.json``; `flywheel.export.runtime.OnnxBundle` runs it with
ONNX Runtime alone.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.errors import ModelError
from flywheel.export.runtime import MANIFEST, OnnxBundle
from flywheel.models import ModelSpec

__all__ = ["OPSET", "PARITY_ATOL", "export_onnx"]

OPSET = 17
#: an fp32 export must match torch to this absolute difference, with identical arg-max
PARITY_ATOL = 1e-4


def _torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    folder: Path,
    *,
    sample: np.ndarray,
    quantize: str | None = None,
    targets: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a bundle to ``folder`` and check it against torch on ``sample``.

    The parity record: max absolute difference, arg-max agreement, and whether the
    fp32 graph passed (|diff| ≤ 1e-4 and identical arg-max). An int8 graph is compared
    too, but its figures are a measurement, not a pass/fail: quantisation changes values.
    With ``targets`` (the true labels or values of ``sample``) the record also holds the
    score of both graphs, so an int8 bundle's accuracy cost is on record.
    """
    if quantize not in (None, "int8"):
        raise ModelError(f"quantize must be 'int8' or nothing; got {quantize!r}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ModelError("pip install 'flywheel-ml[onnx]' to export to ONNX") from exc
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    model.eval()
    # A batch of one: the LSTM exporter bakes a larger example batch into its initial state.
    example = torch.from_numpy(sample[:1])
    with warnings.catch_warnings():
        # The TorchScript-based exporter is the one that handles every zoo model here;
        # torch announces its successor with a deprecation warning on each call.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        # Python checks on shapes inside torch's own layers (nn.LSTM's input size) are
        # traced as constants; the parity check below catches any graph they would break.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The LSTM warning below is about batches other than the example's; the parity
        # check runs a batch of another size, so a graph it describes would fail there.
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*LSTM.*")
        torch.onnx.export(
            model,
            (example,),
            str(fp32),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    (folder / "spec.json").write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True))
    target = fp32
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        target = folder / "model.int8.onnx"
        # ONNX Runtime's recommended step before quantising: shape inference and graph
        # optimisation, so that quantisation sees every tensor's shape.
        prepared = folder / "model.prep.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        prepared.unlink()
    manifest = {
        "format": "onnx",
        "opset": OPSET,
        "model": target.name,
        "spec": "spec.json",
        "quantized": quantize,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "bytes": target.stat().st_size,
        "fp32_bytes": fp32.stat().st_size,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))

    started = time.perf_counter()
    expected = _torch_outputs(model, sample)
    torch_s = time.perf_counter() - started
    bundle = OnnxBundle.load(folder)
    started = time.perf_counter()
    got = bundle.run(sample)
    onnx_s = time.perf_counter() - started
    diff = float(np.abs(got - expected).max()) if got.size else 0.0
    classes = expected.ndim == 2
    agree = float((got.argmax(1) == expected.argmax(1)).mean()) if classes else 1.0
    parity = {
        "n": len(sample),
        "max_abs_diff": diff,
        "argmax_agreement": agree,
        "atol": PARITY_ATOL,
        "onnx_ms_per_sample": onnx_s / max(len(sample), 1) * 1000,
        "torch_ms_per_sample": torch_s / max(len(sample), 1) * 1000,
    }
    if targets is not None and len(targets) == len(sample):
        if classes:
            parity["accuracy_torch"] = float((expected.argmax(1) == targets).mean())
            parity["accuracy_onnx"] = float((got.argmax(1) == targets).mean())
        else:
            parity["mse_torch"] = float(np.mean((expected.reshape(-1) - targets) ** 2))
            parity["mse_onnx"] = float(np.mean((got.reshape(-1) - targets) ** 2))
    parity["passed"] = bool(quantize is not None or (diff <= PARITY_ATOL and agree == 1.0))
    if quantize is None and not parity["passed"]:
        manifest["parity_failed"] = True
    manifest["parity"] = parity
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if quantize is not None:
        fp32.unlink()  # the bundle carries the graph it runs
        manifest["fp32_removed"] = True
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
