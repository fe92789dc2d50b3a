"""A model already in production: an ONNX file exported outside flywheel's registry is
imported with the CLI, served (what ONNX Runtime computes on the file directly), collects
feedback, and is the champion the first retrain's challenger is gated against on the same
rows. Bad inputs are one-line errors; what needs torch weights refuses it by name."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn
from typer.testing import CliRunner

ort = pytest.importorskip("onnxruntime")

from flywheel import Project  # noqa: E402
from flywheel.cli import app, main  # noqa: E402
from flywheel.data import (  # noqa: E402
    Arrays,
    DiabetesSource,
    create_codec,
    digits_arrays,
    tabular_bytes,
)
from flywheel.errors import ModelError  # noqa: E402
from flywheel.export.onnx import write_graph  # noqa: E402
from flywheel.models import build_spec, create_model  # noqa: E402
from flywheel.outputs import softmax  # noqa: E402
from flywheel.serving import create_app  # noqa: E402
from flywheel.training import TrainConfig, fit, seed_everything  # noqa: E402
from tests.factories import digit_png, make_project  # noqa: E402

runner = CliRunner()
DIGITS = [str(d) for d in range(10)]
#: the outside model's classes, in the order of its outputs (not the project's order)
REVERSED = DIGITS[::-1]
L8 = {"kind": "image", "mode": "L", "height": 8, "width": 8}


def _decode(indices: range | list[int], prep: dict = L8) -> np.ndarray:
    return create_codec("image").decode_batch([digit_png(i) for i in indices], prep)


def _export(
    folder: Path, name: str, arch: str, prep: dict, labels: list[str], **kw: object
) -> Path:
    """A zoo architecture trained (or not) outside any project, exported by flywheel's own
    exporter: what a team with a model in production brings."""
    seed_everything(0)
    side = {"image_size": prep["height"]}
    spec = build_spec(arch, task="image-classification", native=prep, labels=labels, options=side)
    model: nn.Module = create_model(spec)
    if kw.get("train"):
        _, targets = digits_arrays()
        rows = list(range(400, 1200))  # none of the project's rows (digits 0..209)
        y = np.array([labels.index(str(targets[i])) for i in rows], np.int64)
        data = Arrays(x=_decode(rows, prep), y=y, labels=list(labels))
        fit(model, data, TrainConfig(epochs=8, batch_size=32, patience=8, seed=0))
    if kw.get("softmax"):
        model = nn.Sequential(model, nn.Softmax(dim=1))
    path = folder / name
    example = np.zeros((1, *spec.input_shape), np.float32)
    if not kw.get("fixed_batch"):
        write_graph(model.eval(), example, path)
        return path
    # torch.onnx as a team might call it: its own names, the batch of one baked in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.from_numpy(example),), str(path), dynamo=False,
            input_names=["pixels"], output_names=["scores"],
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("outside")
    rgb16 = {"kind": "image", "mode": "RGB", "height": 16, "width": 16}
    (folder / "notes.onnx").write_text("not a model, a note")
    return {
        "digits": _export(folder, "digits.onnx", "seed_cnn", L8, REVERSED, train=True),
        "three": _export(folder, "three.onnx", "seed_cnn", L8, ["a", "b", "c"]),
        "rgb16": _export(folder, "rgb16.onnx", "cnn32", rgb16, DIGITS),
        "probs": _export(
            folder, "probs.onnx", "seed_cnn", L8, DIGITS, softmax=True, fixed_batch=True
        ),
        "notonnx": folder / "notes.onnx",
    }


def _import(root: str, path: Path, *args: str) -> dict:
    r = runner.invoke(app, ["import-model", str(path), *args, "--project", root, "--json"])
    assert r.exit_code == 0, r.output
    out: dict = json.loads(r.stdout)
    return out


def test_an_imported_classifier_serves_collects_feedback_and_is_gated_against(
    graphs: dict[str, Path], tmp_path: Path
) -> None:
    root = str(make_project(tmp_path / "p", train=False).settings.project_dir)
    data = graphs["digits"].read_bytes()
    out = _import(root, graphs["digits"], "--labels", ",".join(REVERSED))
    assert (out["model_version"], out["arch"], out["promoted"]) == (1, "onnx", True)
    assert out["aliases"] == ["candidate", "production"]  # no production before: production
    assert (out["outputs"], out["outputs_detected"]) == ("logits", True)
    assert out["graph"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert out["challenger_arch"] == "seed_cnn"  # the task's default: nothing set
    assert out["metrics"]["import_check_rows"] == 60 and out["metrics"]["accuracy"] > 0.8

    project = Project.open(root)
    v1 = project.version_info(1)
    assert (Path(v1.artifact_dir) / "model.onnx").read_bytes() == data
    assert v1.weights_sha256 == out["graph"]["sha256"] == v1.graph_sha256
    direct = ort.InferenceSession(str(graphs["digits"]), providers=["CPUExecutionProvider"])
    _, truth = digits_arrays()
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        assert project.cache.held is not None and project.cache.held.backend.name == "onnx"
        for i in range(1300, 1340):
            user = {"X-User-Id": f"user{i % 4}"}
            png = {"file": ("d.png", digit_png(i), "image/png")}
            r = c.post("/v1/predict", files=png, headers=user)
            assert r.status_code == 200, r.text
            body = r.json()
            want = softmax(direct.run(None, {"input": _decode([i])})[0])[0]
            assert body["model_version"] == 1
            assert body["label"] == REVERSED[int(want.argmax())]
            got = np.array([body["probabilities"][label] for label in REVERSED])
            np.testing.assert_allclose(got, want, atol=1e-6)
            answer = {"prediction_id": body["prediction_id"], "label": str(truth[i])}
            assert c.post("/v1/feedback", json=answer, headers=user).status_code == 201

    result = project.retrain()
    assert result.feedback_used == 40 and result.train is not None
    t = result.train.to_json()
    assert (t["model_version"], t["champion_version"]) == (2, 1)
    v2 = project.version_info(2)
    assert v2.arch == "seed_cnn" and v2.parent == 1
    assert v2.metrics["cold_start"] == "production v1 is an imported ONNX model: no weights"
    assert v2.gate is not None and v2.gate["champion_version"] == 1
    assert v2.gate["rows"] == t["rows"]
    # The same rows, in the same order, for both: the champion read them as it reads them.
    ds = project.services.data.training_set()
    judged = ds.holdout + ds.evaluation
    assert t["rows"]["n"] == len(judged) == t["rows"]["holdout"] + t["rows"]["evaluation"]
    assert (
        t["rows"]["sha256"] == hashlib.sha256("".join(h for h, *_ in judged).encode()).hexdigest()
    )
    assert t["rows"]["champion_decoded"] == "by its own preprocessing and label order"
    codec = create_codec("image")
    x = codec.decode_batch([project.blobs.get(h) for h, *_ in judged], L8)
    right = [REVERSED[k] == label for k, (_, label, _) in zip(
        direct.run(None, {"input": x})[0].argmax(1), judged, strict=True
    )]  # fmt: skip
    assert t["champion_accuracy"] == pytest.approx(float(np.mean(right)), abs=1e-12)

    # A forget withdraws what trained on the user's rows; an imported version (checked on
    # the rows of dataset v2, never trained on them) stays.
    again = project.import_model(graphs["digits"], labels=REVERSED)
    assert (again.model.version, again.model.dataset_version) == (3, 2)
    project.forget("user1", retrain=False)
    assert project.version_info(2).withdrawn is not None
    assert project.version_info(1).withdrawn is None and project.version_info(3).withdrawn is None
    assert project.production_version() in (1, 3)
    project.close()


@pytest.fixture(scope="module")
def imported(graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A digits project whose production is the imported classifier, v1."""
    project = make_project(tmp_path_factory.mktemp("imported") / "p", train=False)
    project.import_model(graphs["digits"], labels=REVERSED)
    return project


def test_what_needs_torch_weights_refuses_an_imported_version_by_name(
    imported: Project, tmp_path: Path
) -> None:
    pid = imported.predict(digit_png(1500)).prediction_id
    with pytest.raises(ModelError, match="v1 is an imported ONNX model: an explanation"):
        imported.explain(pid)
    with pytest.raises(ModelError, match=r"v1 is an imported ONNX model: an export \(written"):
        imported.export(1, tmp_path / "bundle")
    with pytest.raises(ModelError, match=r"an export quantised to int8 .* needs torch weights"):
        imported.export(1, tmp_path / "bundle", quantize="int8")
    assert not (tmp_path / "bundle").exists()


def test_drift_reads_an_imported_classifier_by_its_probabilities(imported: Project) -> None:
    base = imported.services.drift.baseline(1)  # no layers to read an embedding from
    assert (base.rows, base.kind) == (60, "rows")
    assert base.probs is not None and base.probs.shape == (60, 10)


def test_an_imported_graph_is_verified_at_every_load(imported: Project) -> None:
    graph = Path(imported.version_info(1).artifact_dir) / "model.onnx"
    original = graph.read_bytes()
    try:
        graph.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ModelError, match=r"model\.onnx does not match the SHA-256 recorded"):
            imported.services.registry.load(1)
    finally:
        graph.write_bytes(original)
    assert imported.services.registry.load(1).imported


def test_a_second_import_is_the_candidate_unless_promoted(
    imported: Project, graphs: dict[str, Path]
) -> None:
    probs = imported.import_model(graphs["probs"], labels=DIGITS)
    assert (probs.model.version, probs.promoted, probs.model.aliases) == (2, False, ["candidate"])
    assert probs.to_json()["outputs"] == "probabilities"  # detected: rows in [0, 1] summing to 1
    assert probs.to_json()["graph"]["input_shape"] == [1, 1, 8, 8]  # a fixed batch of one
    assert imported.production_version() == 1
    # Its outputs as they come (no softmax on probabilities), five rows through a graph of one.
    direct = ort.InferenceSession(str(graphs["probs"]), providers=["CPUExecutionProvider"])
    x = _decode(range(1500, 1505))
    want = np.concatenate([direct.run(None, {"pixels": x[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(imported.services.registry.load(2).outputs(x), want, atol=1e-7)
    rgb = imported.import_model(
        graphs["rgb16"], labels=DIGITS, image_mode="RGB", image_size=16, promote=True
    )
    assert rgb.promoted and imported.production_version() == 3
    # The declared preprocessing serves: a grey 8x8 PNG read as RGB 16x16, as ONNX runs it.
    direct = ort.InferenceSession(str(graphs["rgb16"]), providers=["CPUExecutionProvider"])
    x = _decode([7], {"kind": "image", "mode": "RGB", "height": 16, "width": 16})
    served = imported.predict(digit_png(7)).probabilities
    want = softmax(direct.run(None, {"input": x})[0])[0]
    np.testing.assert_allclose([served[d] for d in DIGITS], want, atol=1e-6)
    imported.rollback()
    assert imported.production_version() == 1


WRONG = [
    (["{notonnx}", "--labels", "{digits}"], "'{notonnx}' is not a valid ONNX model"),
    (
        ["{three}", "--labels", "{digits}"],
        "the graph's output 'output' has 3 values per row; --labels names 10",
    ),
    (
        ["{rgb16}", "--labels", "{digits}"],
        "the graph's input 'input' takes (N, 3, 16, 16); the project's image rows decode to "
        "(N, 1, 8, 8) (mode L, 8x8): declare the preprocessing it expects (--image-mode L|RGB, "
        "--image-size N)",
    ),
    (["{digits_onnx}"], "a classifier needs its labels in the order of its outputs"),
    (["{digits_onnx}", "--labels", "0,1,2"], "missing: 3, 4, 5, 6, 7, 8, 9"),
    (
        ["{digits_onnx}", "--labels", "{digits}", "--outputs", "probabilities"],
        "--outputs probabilities: the graph's outputs on the project's rows are not probabilities",
    ),
    (
        ["{digits_onnx}", "--labels", "{digits}", "--objective", "regression"],
        "--objective regression: this project is image-classification",
    ),
    (["{digits_onnx}", "--labels", "{digits}", "--columns", "a,b"], "--columns do not apply"),
    (
        ["{digits_onnx}", "--labels", "{digits}", "--arch", "mlp_regressor"],
        "architecture 'mlp_regressor' reads tabular for regression",
    ),
    (["{digits_onnx}", "--labels", "a", "--labels-file", "x"], "give --labels or --labels-file"),
    (["{missing}", "--labels", "{digits}"], "No such file or directory"),
]


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """One digits project without a model for all the bad imports (none leaves one)."""
    return make_project(tmp_path_factory.mktemp("bare") / "p", train=False)


@pytest.mark.parametrize(("args", "message"), WRONG)
def test_bad_imports_are_one_line_errors_and_leave_nothing(
    graphs: dict[str, Path],
    bare: Project,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    project = bare
    root = str(project.settings.project_dir)
    fill = {k: str(v) for k, v in graphs.items()}
    fill |= {"digits_onnx": fill["digits"], "digits": ",".join(DIGITS), "missing": "gone.onnx"}
    argv = ["flywheel", "import-model", *(a.format(**fill) for a in args), "--project", root]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (1, 2)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message.format(**fill) in lines[0], lines[0]
    assert project.models() == [] and not list((Path(root) / "models").glob("v*"))


def test_an_imported_regressor_reads_its_own_columns(tmp_path: Path) -> None:
    project = Project.init(tmp_path / "p", DiabetesSource(), task="regression")
    columns = project.dataset().preprocessing["columns"]
    rows = [
        json.loads(project.blobs.get(h))["features"]
        for h, *_ in project.services.data.rows(1, "train")
    ]
    order = columns[::-1]  # the outside model reads them reversed, raw (not standardised)
    x = np.array([[r[c] for c in order] for r in rows], np.float32)
    y = np.array([v for *_, v in project.services.data.rows(1, "train")], np.float32)
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)
    linear = nn.Linear(len(order), 1)
    linear.weight.data = torch.from_numpy(w[:-1][None].astype(np.float32))
    linear.bias.data = torch.from_numpy(w[-1:].astype(np.float32))
    path = tmp_path / "ridge.onnx"
    write_graph(linear.eval(), np.zeros((1, len(order)), np.float32), path)
    root = str(project.settings.project_dir)

    r = runner.invoke(
        app, ["import-model", str(path), "--project", root, "--columns", ",".join(order)]
    )
    assert r.exit_code != 0 and "--columns needs --mean and --std" in str(r.exception)
    zeros, ones = ",".join("0" for _ in order), ",".join("1" for _ in order)
    args = ["--objective", "regression", "--columns", ",".join(order), "--mean", zeros]
    out = _import(root, path, *args, "--std", ones)
    assert out["promoted"] and out["outputs"] == "values"
    assert out["preprocessing"]["columns"] == order and out["metrics"]["mse"] > 0
    feats = rows[0]
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = float(
        direct.run(None, {"input": np.array([[feats[c] for c in order]], np.float32)})[0][0, 0]
    )
    got = project.predict(tabular_bytes(feats)).value
    assert got == pytest.approx(want, abs=1e-5)
