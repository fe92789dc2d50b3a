"""ONNX export: bundles that run without torch (parity with torch for every architecture of
the zoo is a clause of the contract: ``flywheel.testing``, run in tests/models/test_zoo.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from flywheel.cli import app
from flywheel.errors import ModelError
from flywheel.export.onnx import PARITY_ATOL, check_quantize, compare, export_onnx
from flywheel.export.runtime import OnnxBundle
from flywheel.models import create_model
from flywheel.testing import sample_batch, spec_for
from flywheel.training import seed_everything
from tests.factories import digit_png, make_project


def test_cli_export_gives_a_bundle_that_runs_without_torch(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    root = str(project.settings.project_dir)
    served = project.predict(digit_png(1234))
    project.close()
    runner = CliRunner()
    files = {None: "model.onnx", "int8": "model.int8.onnx", "int8-static": "model.int8-static.onnx"}
    for quantize, name in ((None, "fp32"), ("int8", "int8"), ("int8-static", "static")):
        folder = tmp_path / name
        args = ["export", "1", "--out", str(folder), "--project", root, "--json"]
        r = runner.invoke(app, args + (["--quantize", quantize] if quantize else []))
        assert r.exit_code == 0, r.output
        manifest = json.loads(r.stdout)
        assert manifest["model"] == files[quantize]
        assert manifest["quantized"] == quantize
        assert manifest["opset"] == 17
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["manifest.json", "spec.json", manifest["model"]]
        )
    fp32 = json.loads((tmp_path / "fp32" / "manifest.json").read_text())
    int8 = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert int8["bytes"] < fp32["bytes"]
    assert int8["parity"]["argmax_agreement"] >= 0.9
    # Both graphs scored on the held-out rows; fp32 scores exactly what torch does.
    assert fp32["parity"]["n"] == 60
    assert fp32["parity"]["accuracy_onnx"] == fp32["parity"]["accuracy_torch"]
    assert abs(int8["parity"]["accuracy_onnx"] - int8["parity"]["accuracy_torch"]) <= 0.05
    from flywheel import Project

    reopened = Project.open(root)
    recorded = reopened.models()[0].metrics
    assert recorded["export_int8"]["accuracy_onnx"] == int8["parity"]["accuracy_onnx"]
    reopened.close()

    # A fresh interpreter where torch cannot be imported runs both bundles.
    png = tmp_path / "digit.png"
    png.write_bytes(digit_png(1234))
    script = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from flywheel.export.runtime import OnnxBundle\n"
        "out = {}\n"
        f"for name in ('fp32', 'int8', 'static'):\n"
        f"    b = OnnxBundle.load({str(tmp_path)!r} + '/' + name)\n"
        f"    out[name] = b.predict([open({str(png)!r}, 'rb').read()])[0]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["fp32"]["label"] == served.label
    assert served.probabilities is not None
    for lab, p in served.probabilities.items():
        assert got["fp32"]["probabilities"][lab] == pytest.approx(p, abs=1e-5)
    assert np.isclose(sum(got["int8"]["probabilities"].values()), 1.0)
    assert np.isclose(sum(got["static"]["probabilities"].values()), 1.0)
    # The plain-text summary names the calibration.
    r = runner.invoke(
        app,
        [
            "export",
            "1",
            "--out",
            str(tmp_path / "s2"),
            "--project",
            root,
            "--quantize",
            "int8-static",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "calibrated on 150 train rows" in r.output


def test_static_int8_is_calibrated_on_train_rows_and_costs_little_accuracy(
    tmp_path: Path,
) -> None:
    project = make_project(tmp_path / "p")
    fp32 = project.export(1, tmp_path / "fp32")
    static = project.export(1, tmp_path / "static", quantize="int8-static")
    assert static["quantized"] == "int8-static"
    assert static["model"] == "model.int8-static.onnx"
    # At most CALIBRATION_ROWS train rows; this project has 150.
    assert static["calibration_rows"] == 150
    assert static["calibration"]["format"] == "QDQ"
    assert sorted(p.name for p in (tmp_path / "static").iterdir()) == sorted(
        ["manifest.json", "spec.json", "model.int8-static.onnx"]
    )
    assert static["bytes"] < fp32["bytes"]
    assert (tmp_path / "static" / static["model"]).stat().st_size == static["bytes"]
    # Scored on the 60 held-out rows (never calibrated on them), like fp32.
    assert static["parity"]["n"] == fp32["parity"]["n"] == 60
    assert abs(static["parity"]["accuracy_onnx"] - fp32["parity"]["accuracy_onnx"]) <= 0.05
    recorded = project.models()[0].metrics["export_int8_static"]
    assert recorded["accuracy_onnx"] == static["parity"]["accuracy_onnx"]
    assert recorded["calibration_rows"] == 150
    assert recorded["bytes"] == static["bytes"]

    bundle = OnnxBundle.load(tmp_path / "static")
    x = bundle.codec.decode_batch([digit_png(i) for i in range(5)], bundle.spec["preprocessing"])
    assert bundle.run(x).shape == (5, 10)
    project.close()


def test_quantize_values_are_checked(tmp_path: Path) -> None:
    spec = spec_for("seed_cnn", 0)
    seed_everything(0)
    model = create_model(spec)
    sample = sample_batch(spec, 8).x
    with pytest.raises(ModelError, match=r"'int8', 'int8-static' or nothing; got 'int4'"):
        export_onnx(model, spec, tmp_path / "a", sample=sample, quantize="int4")
    with pytest.raises(ModelError, match="needs calibration rows"):
        export_onnx(model, spec, tmp_path / "b", sample=sample, quantize="int8-static")
    with pytest.raises(ModelError, match="needs calibration rows"):
        export_onnx(
            model,
            spec,
            tmp_path / "c",
            sample=sample,
            quantize="int8-static",
            calibration=sample[:0],
        )
    with pytest.raises(ModelError, match="calibration rows have shape"):
        export_onnx(
            model,
            spec,
            tmp_path / "d",
            sample=sample,
            quantize="int8-static",
            calibration=sample[:, :, :4],
        )
    assert not any((tmp_path / n).exists() for n in "abcd")

    project = make_project(tmp_path / "p", train=False)  # checked before anything is loaded
    with pytest.raises(ModelError, match=r"'int8', 'int8-static' or nothing; got 'fp16'"):
        project.export(1, tmp_path / "e", quantize="fp16")
    assert not (tmp_path / "e").exists()
    root = str(project.settings.project_dir)
    project.close()
    args = ["export", "1", "--out", str(tmp_path / "f"), "--project", root, "--quantize", "int4"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2
    assert "'int8', 'int8-static'" in r.output and "nothing" not in r.output
    assert not (tmp_path / "f").exists()


def test_export_refuses_a_used_folder_and_an_unknown_version(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("keep me")
    from flywheel.errors import InputError, NotFoundError

    with pytest.raises(InputError, match="is not empty"):
        project.export(1, used)
    assert (used / "x").read_text() == "keep me"
    with pytest.raises(NotFoundError):
        project.export(9, tmp_path / "new")
    project.close()


def test_every_challenger_is_checked_against_its_onnx_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p")
    v1 = project.models()[0]
    assert v1.metrics["export_onnx"]["passed"] is True
    assert v1.metrics["export_onnx"]["max_abs_diff"] <= 1e-4

    import flywheel.export.onnx as onnx_module

    real = onnx_module.export_onnx

    def broken(*args: object, **kwargs: object) -> dict[str, object]:
        manifest = real(*args, **kwargs)  # type: ignore[arg-type]
        parity = {**manifest["parity"], "max_abs_diff": 0.5, "passed": False}
        return {**manifest, "parity": parity}

    monkeypatch.setattr(onnx_module, "export_onnx", broken)
    result = project.train(project.train_config(epochs=6))
    assert result.promoted is False
    assert result.decision.reason.startswith("its ONNX export does not match torch")
    assert result.decision.checks["onnx_parity"]["passed"] is False
    assert project.production_version() == 1
    project.close()


def test_the_check_can_be_turned_off(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", settings={"onnx_check": False})
    assert "skipped" in project.models()[0].metrics["export_onnx"]
    project.close()


def test_one_parity_rule_for_exports_and_serving_graphs() -> None:
    want = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    assert compare(want, want + 5e-5) == {
        "max_abs_diff": pytest.approx(5e-5, rel=1e-3),  # float32 steps
        "argmax_agreement": 1.0,
        "match": True,
    }
    assert compare(want, want + 2e-4)["match"] is False  # beyond PARITY_ATOL
    flipped = compare(want, want[:, ::-1].copy())
    assert flipped["argmax_agreement"] == 0.0 and flipped["match"] is False
    assert compare(np.ones(3), np.ones(3))["argmax_agreement"] == 1.0  # regression
    assert PARITY_ATOL == 1e-4
    check_quantize(None)
    check_quantize("int8-static")
    with pytest.raises(ModelError, match="'int8', 'int8-static' or nothing; got 'fp16'"):
        check_quantize("fp16")
