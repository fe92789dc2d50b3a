"""``predict-batch`` in process (no Ray): a folder or a manifest scored by production's
ONNX graph, each row logged as a served call is (the review queue and the drift windows
see them), bad rows reported with their reasons and skipped; the CLI end to end."""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from flywheel import Project
from flywheel.cli import app
from flywheel.data import DiabetesSource, create_codec, tabular_bytes
from flywheel.errors import ConfigError, DataError, ModelError
from flywheel.models import build_spec, create_model
from flywheel.registry.backends import TorchBackend
from flywheel.scale import batch
from tests.factories import FAST, digit_png, make_project

runner = CliRunner()
WINDOW = 20


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = make_project(
        tmp_path_factory.mktemp("batch") / "p",
        settings={"drift_window": WINDOW, "drift_min_window": 10},
    )
    yield p
    p.close()


def _digits(folder: Path, indices: range) -> dict[str, bytes]:
    """Digits as PNGs, every other one in a subfolder; {name: bytes}."""
    files = {}
    for i in indices:
        name = f"sub/d{i}.png" if i % 2 else f"d{i}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(digit_png(i))
        files[name] = digit_png(i)
    return files


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_is_scored_by_the_onnx_graph_and_logged_like_served_calls(
    project: Project, tmp_path: Path
) -> None:
    files = _digits(tmp_path / "in", range(300, 340))
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    seen: list[tuple[int, int, int]] = []
    report = project.predict_batch(
        tmp_path / "in", out=tmp_path / "out.jsonl", batch_size=16,
        on_progress=lambda *a: seen.append(a),
    )  # fmt: skip
    assert (report.on, report.rows, report.scored, report.bad) == ("local", 42, 40, 2)
    assert dict(report.examples)["notes.txt"] == "not a .png/.jpg/.jpeg file"
    assert dict(report.examples)["broken.png"]  # the decoder's reason
    assert seen == [(0, 0, 42), (16, 1, 42), (32, 2, 42), (42, 2, 42)]

    lines = _jsonl(tmp_path / "out.jsonl")
    good = [r for r in lines if "prediction_id" in r]
    assert {r["input"] for r in good} == set(files)
    assert {r["input"] for r in lines if "error" in r} == {"broken.png", "notes.txt"}
    # What torch answers for the same inputs (the graph is checked against it).
    model = project.serving_model()
    x = np.stack([model.decode(files[r["input"]]) for r in good])
    want = model.outputs(x)
    got = np.array([[r["probabilities"][lab] for lab in model.labels] for r in good])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert [r["label"] for r in good] == [model.labels[i] for i in want.argmax(1)]
    # Logged as served calls are: the input as kept, the model version.
    for r in good[:5]:
        assert project.stored_input(r["prediction_id"]) == project.at_the_door(files[r["input"]])
        assert r["model_version"] == report.version == 1

    # The drift windows count them as production's calls, the review queue asks about them.
    windows = project.monitoring(update=True)
    assert windows["closed"] == [1, 2]
    assert [w["calls"] for w in windows["windows"]] == [WINDOW, WINDOW]
    queue = project.review_queue(limit=10)
    ids = {r["prediction_id"] for r in good}
    assert sum(item["prediction_id"] in ids for item in queue) >= 8  # the rest: golden probes


def test_the_folder_is_read_in_walk_order(project: Project, tmp_path: Path) -> None:
    _digits(tmp_path / "in", range(10, 14))
    report = project.predict_batch(tmp_path / "in", out=tmp_path / "o.jsonl")
    names = [r["input"] for r in _jsonl(tmp_path / "o.jsonl")]
    assert names == ["d10.png", "d12.png", "sub/d11.png", "sub/d13.png"]
    assert report.scored == 4


def test_cli_scores_a_csv_manifest_and_reports_each_bad_row_without_stopping(
    project: Project, tmp_path: Path
) -> None:
    files = _digits(tmp_path / "img", range(400, 406))
    (tmp_path / "img" / "words.png").write_text("not a png")
    rows = [("a", f"img/{name}") for name in files]
    rows += [("gone", "img/missing.png"), ("empty", ""), ("words", "img/words.png")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n" + "".join(f"{i},{p}\n" for i, p in rows))
    out = tmp_path / "answers.csv"
    root = str(project.settings.project_dir)
    r = runner.invoke(
        app, ["predict-batch", str(manifest), "--out", str(out), "-p", root, "--json"],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)
    assert (body["on"], body["rows"], body["scored"], body["bad"]) == ("local", 9, 6, 3)
    assert {b["input"] for b in body["bad_examples"]} == {"gone", "empty", "words"}
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [
        "input", "prediction_id", "model_version", *(f"p_{d}" for d in range(10)), "label",
        "error",
    ]  # fmt: skip
    assert [t["input"] for t in table] == [i for i, _ in rows]
    errors = {t["input"]: t["error"] for t in table if t["error"]}
    assert errors == {
        "gone": "cannot be read: No such file or directory",
        "empty": "empty 'path'",
        "words": "the file's bytes are not a PNG or JPEG image",
    }
    for t in table[:6]:
        probs = [float(t[f"p_{d}"]) for d in range(10)]
        assert abs(sum(probs) - 1) < 1e-5 and t["label"] == str(int(np.argmax(probs)))
        assert project.stored_input(t["prediction_id"])  # committed

    # The summary for a person: counts, rate, and the bad rows with their reasons.
    r = runner.invoke(app, ["predict-batch", str(manifest), "-p", root], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "v1: 6 of 9 inputs scored and logged in" in r.stdout and "in process" in r.stdout
    assert "3 bad input(s) skipped" in r.stderr
    assert "gone: cannot be read: No such file or directory" in r.stderr


def test_what_cannot_be_scored_at_all_fails_before_anything_is_logged(
    project: Project, tmp_path: Path
) -> None:
    before = project.stats()["calls"]["total"]
    with pytest.raises(DataError, match="does not exist"):
        project.predict_batch(tmp_path / "nowhere")
    (tmp_path / "m.csv").write_text("file\nx.png\n")
    with pytest.raises(DataError, match=r"path column 'path' is not in m\.csv"):
        project.predict_batch(tmp_path / "m.csv")
    with pytest.raises(ConfigError, match=r"must be \.jsonl or \.csv; got 'o.txt'"):
        project.predict_batch(tmp_path, out=tmp_path / "o.txt")
    with pytest.raises(ConfigError, match="set ray_address"):
        project.predict_batch(tmp_path, on="ray")
    assert project.stats()["calls"]["total"] == before
    r = runner.invoke(app, ["predict-batch", str(tmp_path), "--on", "gpu", "-p", "."])
    assert r.exit_code == 2 and "must be 'ray' or 'local'" in r.output


def test_a_regression_manifest_of_feature_columns_gets_values(tmp_path: Path) -> None:
    project = Project.init(tmp_path / "p", DiabetesSource(), task="regression", settings=FAST)
    project.train()
    examples = [
        json.loads(e.content)["features"] for e, _ in zip(DiabetesSource(), range(5), strict=False)
    ]
    columns = list(examples[0])
    manifest = tmp_path / "rows.jsonl"
    lines = [json.dumps({"id": f"r{i}", **f}) for i, f in enumerate(examples)]
    lines.append(json.dumps({"id": "short", "age": 0.1}))
    manifest.write_text("\n".join(lines) + "\n")
    report = project.predict_batch(manifest, out=tmp_path / "v.jsonl")
    assert (report.scored, report.bad) == (5, 1)
    out = _jsonl(tmp_path / "v.jsonl")
    assert out[-1]["input"] == "short" and out[-1]["error"].startswith("missing feature columns")
    model = project.serving_model()
    x = np.stack([model.decode(tabular_bytes({c: f[c] for c in columns})) for f in examples])
    np.testing.assert_allclose([r["value"] for r in out[:5]], model.outputs(x), rtol=1e-5)
    project.close()


def test_an_imported_graph_is_scored_as_it_came(tmp_path: Path) -> None:
    """A graph with its own names, a batch of one baked in and probabilities out: what
    ONNX Runtime computes on the file directly, row for row."""
    ort = pytest.importorskip("onnxruntime")
    prep = {"kind": "image", "mode": "L", "height": 8, "width": 8}
    labels = [str(d) for d in range(10)]
    spec = build_spec(
        "seed_cnn", task="image-classification", native=prep, labels=labels,
        options={"image_size": 8},
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(create_model(spec), nn.Softmax(dim=1)).eval()
    graph = tmp_path / "outside.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, *spec.input_shape),), str(graph), dynamo=False,
            input_names=["pixels"], output_names=["scores"],
        )  # fmt: skip
    project = make_project(tmp_path / "p", train=False)
    project.import_model(graph, labels=labels, promote=True)
    files = _digits(tmp_path / "in", range(700, 705))
    report = project.predict_batch(tmp_path / "in", out=tmp_path / "o.jsonl")
    assert report.graph_sha256 == hashlib.sha256(graph.read_bytes()).hexdigest()
    direct = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    codec = create_codec("image")
    for r in _jsonl(tmp_path / "o.jsonl"):
        x = codec.decode(files[r["input"]], prep)[None]
        want = direct.run(None, {"pixels": x})[0][0]
        got = [r["probabilities"][lab] for lab in labels]
        np.testing.assert_allclose(got, want, atol=1e-6)
    project.close()


def test_a_version_without_an_onnx_graph_is_scored_by_torch_here_and_refused_on_ray(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def torch_only(loaded: object, kind: str, **kw: object) -> TorchBackend:
        return TorchBackend(loaded)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "load_backend", torch_only)
    monkeypatch.setattr(batch, "_served_graph", lambda services, version: None)
    files = _digits(tmp_path / "in", range(800, 803))
    report = project.predict_batch(tmp_path / "in", out=tmp_path / "o.jsonl")
    assert (report.scored, report.graph_sha256) == (3, None)
    model = project.serving_model()
    for r in _jsonl(tmp_path / "o.jsonl"):
        want = model.outputs(model.decode(files[r["input"]])[None])[0]
        np.testing.assert_allclose(
            [r["probabilities"][lab] for lab in model.labels], want, atol=1e-6
        )
    with pytest.raises(ModelError, match=r"v1 \(seed_cnn\) is not served by ONNX Runtime"):
        project.predict_batch(tmp_path / "in", on="ray")


def test_the_servers_own_graph_is_scored_with_once_it_was_exported(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.cache.serve_with("onnx")  # as a server does: serving.onnx, its hash recorded
    try:
        project.cache.refresh()
    finally:
        project.cache.stop_serving()
    recorded = project.version_info(1).graph_sha256
    assert recorded

    def no_export(*args: object, **kw: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(batch, "load_backend", no_export)
    _digits(tmp_path / "in", range(900, 903))
    report = project.predict_batch(tmp_path / "in")
    assert (report.scored, report.graph_sha256) == (3, recorded)
