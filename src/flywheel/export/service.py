"""Export's service: a version's ONNX bundle, checked on the held-out rows, with the
record kept beside the version."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.context import Context
from flywheel.data.service import DatasetService
from flywheel.errors import InputError, ModelError
from flywheel.export.onnx import CALIBRATION_ROWS, check_quantize, export_onnx
from flywheel.registry.imported import needs_weights
from flywheel.registry.service import RegistryService

__all__ = ["ExportService"]


class ExportService:
    def __init__(self, ctx: Context, registry: RegistryService, data: DatasetService) -> None:
        self.ctx = ctx
        self.registry = registry
        self.data = data

    def export(
        self, version: int, out_dir: str | Path, *, quantize: str | None = None
    ) -> dict[str, Any]:
        """Write an ONNX bundle of ``version`` (runs with ONNX Runtime alone) and check it.

        ``quantize``: ``None`` (fp32), ``"int8"`` (dynamic) or ``"int8-static"`` (static,
        calibrated on a fixed seeded sample of at most `CALIBRATION_ROWS` rows of the
        latest dataset version's train split). The parity check against torch runs on the
        held-out rows, with both graphs' accuracy (MSE) there; the record is kept with the
        model version (``metrics["export_onnx"]`` / ``["export_int8"]`` /
        ``["export_int8_static"]``). An fp32 export that fails parity is an error, and its
        bundle is not left behind.
        """
        check_quantize(quantize)
        out = Path(out_dir).expanduser().resolve()
        if out.exists() and any(out.iterdir()):
            raise InputError(f"output folder {str(out)!r} is not empty")
        loaded = self.registry.load(version)
        what = "an export" if quantize is None else f"an export quantised to {quantize}"
        needs_weights(loaded.spec, f"{what} (written from torch and checked against it)", version)
        holdout_rows, train_rows = self.data.evaluation_rows(train=quantize == "int8-static")
        holdout = self.data.arrays(holdout_rows, loaded.spec)
        calibration = None
        if train_rows:
            # Train rows, so that the held-out scores below stay a fair measurement.
            rng = np.random.default_rng(self.ctx.settings.seed)
            n = min(CALIBRATION_ROWS, len(train_rows))
            keep = rng.choice(len(train_rows), size=n, replace=False)
            calibration = self.data.arrays([train_rows[i] for i in sorted(keep)], loaded.spec).x
        try:
            manifest = export_onnx(
                loaded.model,
                loaded.spec,
                out,
                sample=holdout.x,
                quantize=quantize,
                targets=holdout.y,
                calibration=calibration,
            )
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        if manifest.get("parity_failed"):
            shutil.rmtree(out, ignore_errors=True)
            raise ModelError(
                f"the ONNX export of v{version} does not match torch: max |diff| "
                f"{manifest['parity']['max_abs_diff']:.3g} (allowed {manifest['parity']['atol']}), "
                f"arg-max agreement {manifest['parity']['argmax_agreement']:.4f}",
                version=version,
            )
        record = {**manifest["parity"], "bytes": manifest["bytes"]}
        if "calibration_rows" in manifest:
            record["calibration_rows"] = manifest["calibration_rows"]
        key = f"export_{(quantize or 'onnx').replace('-', '_')}"  # export_int8_static
        self.registry.add_metrics(version, {key: record})
        return {**manifest, "folder": str(out), "model_version": version}
