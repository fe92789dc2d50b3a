"""The Open Inference Protocol (KServe V2 REST), spoken by its own clients: Triton's
``tritonclient.http`` (binary tensors by default, and JSON) and KServe's
``InferenceRESTClient``, against a real server; each answer equals ``/v1/predict``'s."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from flywheel import Project
from flywheel.data import DiabetesSource, decode_image, tabular_bytes
from flywheel.data.images import ImagePreprocessing
from flywheel.serving import BackgroundServer
from tests.factories import digit_png, make_project

Served = tuple[Project, str]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    project = make_project(tmp_path_factory.mktemp("oip") / "digits")
    with BackgroundServer(project) as server:
        yield project, server.url
    project.close()


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("oip") / "diabetes"
    project = Project.init(root, DiabetesSource(), task="regression", settings={"epochs": 2})
    project.train()
    with BackgroundServer(project) as server:
        yield project, server.url
    project.close()


def _triton(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=url.removeprefix("http://"))


def _pixels(project: Project, png: bytes) -> np.ndarray:
    prep = ImagePreprocessing.from_json(project.dataset().preprocessing)
    return decode_image(png, prep)


def _text(values: Any) -> list[str]:
    """A BYTES output as text (binary: bytes; JSON: already str)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def _v1(url: str, **kwargs: Any) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/predict", timeout=30, **kwargs)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _same_as_v1(result: Any, v1: list[dict[str, Any]], labels: list[str]) -> None:
    """The v2 answer's probabilities and labels are /v1's, row by row."""
    probs = result.as_numpy("probabilities")
    got = _text(result.as_numpy("label"))
    assert got == [a["label"] for a in v1]
    want = np.array([[a["probabilities"][k] for k in labels] for a in v1], np.float32)
    # The same model on the same input; a forward pass over a batch of another size may
    # round the last bit of a float32 differently (torch's matmul), hence one ulp of slack.
    np.testing.assert_allclose(probs, want, rtol=1e-6, atol=1e-7)


def _logged(project: Project, url: str, ids: list[str]) -> list[bytes]:
    """Each prediction id answers /v1/feedback (so it was logged); the stored inputs."""
    for pid in ids:
        r = httpx.post(f"{url}/v1/feedback", json={"prediction_id": pid, "correct": True})
        assert r.status_code == 201, r.text
    return [project.stored_input(pid) for pid in ids]


# -- tritonclient ---------------------------------------------------------------------


def test_tritonclient_health_and_metadata(image: Served) -> None:
    project, url = image
    name = project.settings.served_name
    c = _triton(url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(name) and c.is_model_ready(name, "1")
    assert not c.is_model_ready(name, "7") and not c.is_model_ready("another")
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    meta = c.get_model_metadata(name)
    assert meta["name"] == name and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    labels = meta["parameters"]["labels"].split(",")
    assert labels == project.serving_model().labels
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label", "prediction_id"]
    assert meta["outputs"][0]["shape"] == [-1, len(labels)]
    with pytest.raises(InferenceServerException, match="unknown model 'another'"):
        c.get_model_metadata("another")


def test_tritonclient_infers_encoded_images_as_binary_bytes(image: Served) -> None:
    project, url = image
    pngs = [digit_png(i) for i in (1500, 1501, 1502)]
    v1 = [_v1(url, content=p, headers={"Content-Type": "image/png"}) for p in pngs]
    x = triton.InferInput("input", [len(pngs)], "BYTES")
    x.set_data_from_numpy(np.array(pngs, dtype=object))  # binary by default
    result = _triton(url).infer(project.settings.served_name, [x])
    raw = result.get_response()
    assert raw["model_version"] == "1"
    assert all("binary_data_size" in o["parameters"] for o in raw["outputs"])  # binary back
    _same_as_v1(result, v1, project.serving_model().labels)
    ids = _text(result.as_numpy("prediction_id"))
    assert raw["parameters"]["prediction_ids"] == ",".join(ids) and len(set(ids)) == 3
    assert _logged(project, url, ids) == pngs  # kept as sent


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_pixel_tensors(image: Served, binary: bool) -> None:
    project, url = image
    pngs = [digit_png(i) for i in (1600, 1601)]
    v1 = [_v1(url, files={"file": ("d.png", p, "image/png")}) for p in pngs]
    pixels = np.stack([_pixels(project, p) for p in pngs])
    x = triton.InferInput("input", list(pixels.shape), "FP32")
    x.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary)
        for n in ("probabilities", "label", "prediction_id")
    ]
    result = _triton(url).infer(
        project.settings.served_name, [x], model_version="1", outputs=outputs, request_id="r-7"
    )
    raw = result.get_response()
    assert raw["id"] == "r-7"
    assert all(("data" in o) != binary for o in raw["outputs"])
    _same_as_v1(result, v1, project.serving_model().labels)
    ids = _text(result.as_numpy("prediction_id"))
    kept = _logged(project, url, ids)  # each kept as the PNG of its pixels
    assert [np.array_equal(_pixels(project, k), p) for k, p in zip(kept, pixels, strict=True)] == [
        True,
        True,
    ]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_tabular_rows(tabular: Served, binary: bool) -> None:
    project, url = tabular
    name = project.settings.served_name
    c = _triton(url)
    meta = c.get_model_metadata(name)
    columns = meta["parameters"]["feature_names"].split(",")
    assert columns == project.dataset().preprocessing["columns"]
    assert meta["inputs"][0]["shape"] == [-1, len(columns)] and "labels" not in meta["parameters"]
    rows = np.random.default_rng(0).normal(0, 0.05, size=(4, len(columns))).astype(np.float32)
    v1 = [_v1(url, json={"features": dict(zip(columns, map(float, r), strict=True))}) for r in rows]
    x = triton.InferInput("input", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary) for n in ("value", "prediction_id")
    ]
    result = c.infer(name, [x], outputs=outputs)
    values = result.as_numpy("value")
    np.testing.assert_array_equal(values, np.array([a["value"] for a in v1], np.float32))
    ids = _text(result.as_numpy("prediction_id"))
    kept = _logged(project, url, ids)
    assert kept[0] == tabular_bytes(dict(zip(columns, map(float, rows[0]), strict=True)))


def test_tabular_rows_may_come_as_one_input_per_feature(tabular: Served) -> None:
    project, url = tabular
    columns = list(project.dataset().preprocessing["columns"])
    row = {c: 0.01 * i for i, c in enumerate(columns)}
    body = {
        "inputs": [
            {"name": c, "datatype": "FP64", "shape": [1], "data": [v]} for c, v in row.items()
        ]
    }
    name = project.settings.served_name
    r = httpx.post(f"{url}/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    (value,) = next(o["data"] for o in r.json()["outputs"] if o["name"] == "value")
    assert value == pytest.approx(_v1(url, json={"features": row})["value"], rel=1e-6)
    del body["inputs"][0]
    r = httpx.post(f"{url}/v2/models/{name}/infer", json=body)
    assert r.status_code == 422 and f"missing ['{columns[0]}']" in r.json()["error"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_texts(tmp_path: Path, binary: bool) -> None:
    pytest.importorskip("transformers")
    from flywheel.data import SourceOptions, resolve_source

    path = tmp_path / "texts.csv"
    rows = [("the server is down again", "ops"), ("disk full on the database", "ops")] * 3
    rows += [("the match ended two to one", "sport"), ("a late goal won it", "sport")] * 3
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    source, task = resolve_source(str(path), SourceOptions(task="text-classification"))
    project = Project.init(tmp_path / "p", source, task=task, settings={"epochs": 1})
    project.train()
    texts = ["the disk is full", "what a goal"]
    with BackgroundServer(project) as server:
        url, name = server.url, project.settings.served_name
        v1 = [_v1(url, json={"text": t}) for t in texts]
        c = _triton(url)
        meta = c.get_model_metadata(name)
        assert meta["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
        x = triton.InferInput("input", [2], "BYTES")
        x.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary)
        outputs = [triton.InferRequestedOutput(n, binary) for n in ("probabilities", "label")]
        _same_as_v1(c.infer(name, [x], outputs=outputs), v1, project.serving_model().labels)
        x = triton.InferInput("input", [1, 4], "FP32")
        x.set_data_from_numpy(np.zeros((1, 4), np.float32))
        with pytest.raises(InferenceServerException, match="takes BYTES"):
            c.infer(name, [x])
    project.close()


# -- KServe's client ------------------------------------------------------------------


def test_kserve_rest_client(image: Served) -> None:
    project, url = image
    name = project.settings.served_name
    png = digit_png(1700)
    v1 = _v1(url, content=png, headers={"Content-Type": "image/png"})
    pixels = _pixels(project, png)[None]

    async def run() -> tuple[bool, bool, Any, Any]:
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            ready = await client.is_server_ready(url)
            model_ready = await client.is_model_ready(url, name)
            answers = []
            for binary in (False, True):
                x = InferInput("input", list(pixels.shape), "FP32")
                x.set_data_from_numpy(pixels, binary_data=binary)
                request = InferRequest(model_name=name, infer_inputs=[x])
                answers.append(await client.infer(url, request, model_name=name))
            return ready, model_ready, answers[0], answers[1]
        finally:
            await client.close()

    ready, model_ready, as_json, as_binary = asyncio.run(run())
    assert ready and model_ready
    labels = project.serving_model().labels
    for answer in (as_json, as_binary):
        assert answer.model_name == name
        out = {o.name: o for o in answer.outputs}
        probs = out["probabilities"].as_numpy()
        want = np.array([[v1["probabilities"][k] for k in labels]], np.float32)
        np.testing.assert_array_equal(probs, want)
        assert _text(out["label"].as_numpy()) == [v1["label"]]


# -- what a client can get wrong: {"error": ...} with a 4xx, nothing logged -----------


def _post(url: str, name: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return httpx.post(f"{url}/v2/models/{name}/infer", content=body, headers=headers or {})


def test_bad_requests_are_named_4xx_errors_and_log_nothing(image: Served) -> None:
    project, url = image
    name = project.settings.served_name
    before = project.stats()["calls"]["total"]
    pixels = _pixels(project, digit_png(3)).reshape(-1).tolist()
    good = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": pixels}

    def refused(body: Any, status: int, words: str, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = _post(url, name, raw, headers)
        assert r.status_code == status, r.text
        assert words in r.json()["error"], r.json()

    refused(b"", 422, "no body")
    refused(b"{nope", 422, "JSON cannot be read")
    refused({"inputs": []}, 422, "non-empty list")
    refused({"inputs": [{**good, "shape": [1, 1, 4, 4]}]}, 422, "shape [1, 1, 4, 4] holds 16")
    refused({"inputs": [{**good, "shape": [1, 64]}]}, 422, "the model takes [N, 1, 8, 8]")
    refused({"inputs": [{**good, "data": [2.0] * 64}]}, 422, "pixels are in [0, 1]")
    refused({"inputs": [{**good, "datatype": "BF16"}]}, 422, "datatype 'BF16' is not one of")
    refused({"inputs": [{**good, "data": ["x"] * 64}]}, 422, "data must be numbers")
    refused(
        {"inputs": [good], "outputs": [{"name": "logits"}]}, 422, "unknown output(s) ['logits']"
    )
    gif = b"GIF89a" + b"\0" * 20
    blob = struct.pack("<I", len(gif)) + gif
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    refused(
        head + blob,
        415,
        "input 'input'[0]: the file's bytes are not",
        {"Inference-Header-Content-Length": str(len(head))},
    )
    refused(
        head + blob[:-3],
        422,
        "runs past the body",
        {"Inference-Header-Content-Length": str(len(head))},
    )
    refused(
        head + blob,
        422,
        "must be the length of the JSON",
        {"Inference-Header-Content-Length": "-4"},
    )
    refused({"inputs": [good]}, 415, "Content-Encoding 'gzip'", {"Content-Encoding": "gzip"})
    r = httpx.post(f"{url}/v2/models/other/infer", json={"inputs": [good]})
    assert r.status_code == 404 and "this server serves" in r.json()["error"]
    r = httpx.post(f"{url}/v2/models/{name}/versions/9/infer", json={"inputs": [good]})
    assert r.status_code == 404 and "has no version 9" in r.json()["error"]
    r = httpx.post(f"{url}/v2/models/{name}/versions/x/infer", json={"inputs": [good]})
    assert r.status_code == 422 and "error" in r.json()
    assert project.stats()["calls"]["total"] == before  # none of them was logged
    assert _post(url, name, json.dumps({"inputs": [good]}).encode()).status_code == 200
    assert project.stats()["calls"]["total"] == before + 1  # a good one is


def test_a_server_without_a_model_is_live_but_not_ready(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", train=False)
    with BackgroundServer(project) as server:
        c = _triton(server.url)
        assert c.is_server_live() and not c.is_server_ready()
        r = httpx.get(f"{server.url}/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        r = httpx.get(f"{server.url}/v2/models/{project.settings.served_name}")
        assert r.status_code == 503 and "no production model" in r.json()["error"]
    project.close()
