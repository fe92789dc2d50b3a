"""Exporting a model version to ONNX (pinned opset, dynamic batch axis), with a parity check.

The bundle holds ``model.onnx`` (or ``model.int8.onnx`` / ``model.int8-static.onnx``),
``spec.json`` (labels and preprocessing) and ``manifest.json``;
`flywheel.export.runtime.OnnxBundle` runs it with ONNX Runtime alone.

Quantisation is ONNX Runtime's own: ``"int8"`` is dynamic (int8 weights, activations'
ranges found at run time), ``"int8-static"`` is static (int8 weights and activations in
QDQ form, activations' ranges calibrated beforehand on rows of the data set).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.errors import ModelError
from flywheel.export.runtime import MANIFEST, OnnxBundle
from flywheel.models import ModelSpec, arch_info

__all__ = [
    "CALIBRATION_ROWS",
    "OPSET",
    "PARITY_ATOL",
    "QUANTIZE_MODES",
    "challenger_parity",
    "check_quantize",
    "compare",
    "export_onnx",
    "write_graph",
]

OPSET = 17
#: an fp32 export must match torch to this absolute difference, with identical arg-max
PARITY_ATOL = 1e-4
#: the ``quantize`` values `export_onnx` takes (besides ``None``: fp32)
QUANTIZE_MODES = ("int8", "int8-static")
#: at most this many rows calibrate a static int8 export (`ExportService` samples them)
CALIBRATION_ROWS = 256
#: rows per calibration batch fed to ONNX Runtime's calibrator
CALIBRATION_BATCH = 64
_MODEL_FILES = {"int8": "model.int8.onnx", "int8-static": "model.int8-static.onnx"}


def check_quantize(quantize: str | None, *, option: bool = False) -> None:
    """Refuse a ``quantize`` value other than ``None`` (fp32) or one of `QUANTIZE_MODES`
    (``option``: as a command-line option's value, which fp32 leaves out)."""
    if quantize is not None and quantize not in QUANTIZE_MODES:
        allowed = ", ".join(repr(q) for q in QUANTIZE_MODES)
        fp32 = "" if option else " or nothing"
        raise ModelError(f"quantize must be one of {allowed}{fp32}; got {quantize!r}")


def compare(want: np.ndarray, got: np.ndarray, atol: float = PARITY_ATOL) -> dict[str, Any]:
    """How closely a graph's outputs ``got`` follow torch's ``want`` on the same rows.

    ``max_abs_diff`` and ``argmax_agreement`` (1.0 for regression); ``match`` when the
    difference is within ``atol`` and every row's arg-max agrees.
    """
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    classes = want.ndim == 2
    agree = float((got.argmax(1) == want.argmax(1)).mean()) if classes and len(want) else 1.0
    return {"max_abs_diff": diff, "argmax_agreement": agree, "match": diff <= atol and agree == 1.0}


def _torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


def _quantize_static(prepared: Path, target: Path, calibration: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime's static int8 quantisation of ``prepared``, calibrated on ``calibration``.

    QDQ format with int8 weights (per output channel, which keeps convolutions' filters
    of very different scales apart) and int8 activations whose ranges are the min/max
    seen on the calibration rows; the CPU provider fuses each QDQ group into an integer
    kernel (QLinearConv, QGemm). Signed activations (S8S8) are ONNX Runtime's default for
    QDQ on x86-64; unsigned ones measured no faster on the digits CNN. Returns the
    settings, for the manifest.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        """The calibration rows, a batch at a time, as ONNX Runtime's calibrator reads them."""

        def __init__(self, x: np.ndarray) -> None:
            self.batches = iter(
                [x[i : i + CALIBRATION_BATCH] for i in range(0, len(x), CALIBRATION_BATCH)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    quantize_static(
        str(prepared),
        str(target),
        Batches(np.ascontiguousarray(calibration, dtype=np.float32)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return {
        "rows": len(calibration),
        "format": "QDQ",
        "method": "MinMax",
        "weights": "int8 per channel",
        "activations": "int8",
    }


def write_graph(model: nn.Module, example: np.ndarray, path: Path) -> None:
    """Export ``model`` to an ONNX file (opset ``OPSET``, dynamic batch axis).

    ``example`` is one input of the right shape (a batch of one: the LSTM exporter bakes
    a larger example batch into its initial state).
    """
    model.eval()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is the one that handles every zoo model here;
        # torch announces its successor with a deprecation warning on each call.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        # Python checks on shapes inside torch's own layers (nn.LSTM's input size) are
        # traced as constants; a parity check catches any graph they would break.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The LSTM warning below is about batches other than the example's; a parity
        # check on a batch of another size catches a graph it describes.
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*LSTM.*")
        torch.onnx.export(
            model,
            (torch.from_numpy(example[:1]),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    folder: Path,
    *,
    sample: np.ndarray,
    quantize: str | None = None,
    targets: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a bundle to ``folder`` and check it against torch on ``sample``.

    The parity record: max absolute difference, arg-max agreement, and whether the
    fp32 graph passed (|diff| ≤ 1e-4 and identical arg-max). An int8 graph is compared
    too, but its figures are a measurement, not a pass/fail: quantisation changes values.
    With ``targets`` (the true labels or values of ``sample``) the record also holds the
    score of both graphs, so an int8 bundle's accuracy cost is on record.

    ``quantize``: ``None`` (fp32), ``"int8"`` (dynamic) or ``"int8-static"``, which needs
    ``calibration``: decoded input rows (as the model takes them) whose activations set
    the int8 ranges. Calibrate on training rows, not on ``sample``, so that the scores
    on ``sample`` stay an honest measurement.
    """
    _check_export(quantize, sample, calibration)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    model.eval()
    write_graph(model, sample[:1], fp32)
    (folder / "spec.json").write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True))
    target, calibrated = fp32, None
    if quantize is not None:
        target = folder / _MODEL_FILES[quantize]
        calibrated = _quantize(fp32, target, quantize, calibration)
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
    if calibrated is not None:
        manifest["calibration_rows"] = calibrated["rows"]
        manifest["calibration"] = calibrated
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))

    parity = _parity(model, OnnxBundle.load(folder), sample, targets)
    match = parity.pop("match")
    parity["passed"] = bool(quantize is not None or match)
    if quantize is None and not parity["passed"]:
        manifest["parity_failed"] = True
    manifest["parity"] = parity
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if quantize is not None:
        fp32.unlink()  # the bundle carries the graph it runs
        manifest["fp32_removed"] = True
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _check_export(quantize: str | None, sample: np.ndarray, calibration: np.ndarray | None) -> None:
    check_quantize(quantize)
    if quantize == "int8-static" and (calibration is None or not len(calibration)):
        raise ModelError(
            "quantize='int8-static' needs calibration rows (decoded inputs from the data set)"
        )
    if (
        calibration is not None
        and len(calibration)
        and len(sample)
        and calibration.shape[1:] != sample.shape[1:]
    ):
        raise ModelError(
            f"calibration rows have shape {calibration.shape[1:]}, the model takes "
            f"{sample.shape[1:]}"
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ModelError("pip install 'flywheel-ml[onnx]' to export to ONNX") from exc


def _quantize(
    fp32: Path, target: Path, quantize: str, calibration: np.ndarray | None
) -> dict[str, Any] | None:
    """Quantise ``fp32`` into ``target``; the calibration settings of a static export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX Runtime's recommended step before quantising: shape inference and graph
    # optimisation, so that quantisation sees every tensor's shape.
    prepared = fp32.with_name("model.prep.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared))
        if quantize == "int8-static":
            assert calibration is not None  # checked by _check_export
            return _quantize_static(prepared, target, calibration)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        return None
    finally:
        prepared.unlink(missing_ok=True)


def _parity(
    model: nn.Module, bundle: OnnxBundle, sample: np.ndarray, targets: np.ndarray | None
) -> dict[str, Any]:
    """The bundle's graph against torch on ``sample``: differences, timings, scores."""
    started = time.perf_counter()
    expected = _torch_outputs(model, sample)
    torch_s = time.perf_counter() - started
    started = time.perf_counter()
    got = bundle.run(sample)
    onnx_s = time.perf_counter() - started
    match = compare(expected, got)
    parity: dict[str, Any] = {
        "n": len(sample),
        "max_abs_diff": match["max_abs_diff"],
        "argmax_agreement": match["argmax_agreement"],
        "atol": PARITY_ATOL,
        "onnx_ms_per_sample": onnx_s / max(len(sample), 1) * 1000,
        "torch_ms_per_sample": torch_s / max(len(sample), 1) * 1000,
    }
    if targets is not None and len(targets) == len(sample):
        if expected.ndim == 2:
            parity["accuracy_torch"] = float((expected.argmax(1) == targets).mean())
            parity["accuracy_onnx"] = float((got.argmax(1) == targets).mean())
        else:
            parity["mse_torch"] = float(np.mean((expected.reshape(-1) - targets) ** 2))
            parity["mse_onnx"] = float(np.mean((got.reshape(-1) - targets) ** 2))
    parity["match"] = match["match"]
    return parity


def challenger_parity(
    model: nn.Module, spec: ModelSpec, x: np.ndarray, *, enabled: bool
) -> dict[str, Any]:
    """Export a challenger to ONNX in a scratch folder and compare it with torch on ``x``
    (the gate refuses one whose graph does not match); skipped, and says why, when the
    check is off, the architecture does not export per run, or onnxruntime is missing."""
    if not enabled or not arch_info(spec.arch).onnx_check or not len(x):
        return {"skipped": "onnx_check is off for this project or architecture"}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {"skipped": "onnxruntime is not installed (pip install 'flywheel-ml[onnx]')"}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_onnx(model, spec, Path(tmp) / "bundle", sample=x[:256])
    record: dict[str, Any] = manifest["parity"]
    return record
