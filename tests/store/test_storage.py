"""Storage: one interface over a folder and fsspec; models, checkpoints and blobs on an
S3-compatible server (moto's, on 127.0.0.1) and on a folder two projects share, as two
machines would; errors that name the storage and the key."""

from __future__ import annotations

import json
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from flywheel import ModelError, Project
from flywheel.context import CACHE
from flywheel.data import ListSource
from flywheel.errors import ConfigError, NotFoundError, StorageError
from flywheel.registry import SPEC, WEIGHTS, OnnxBackend, load_backend
from flywheel.registry.artifacts import ArtifactFolder
from flywheel.serving import create_app
from flywheel.settings import CONFIG_FILE, Settings
from flywheel.store import BlobStore, Storage, open_storage, sha256
from flywheel.store.schema import Example, ModelVersion
from flywheel.store.storage import LocalStorage
from tests.factories import FAST, digit_png, digits_subset

CREDENTIALS = {"key": "flywheel-test", "secret": "flywheel-test-secret"}


# -- an S3-compatible server ------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread on a free loopback port."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # its request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="function")
def s3(s3_endpoint: str) -> dict[str, Any]:
    """A fresh bucket: the settings that point a project at it."""
    bucket = f"flywheel-{uuid.uuid4().hex[:12]}"
    options = {"endpoint_url": s3_endpoint, **CREDENTIALS}
    root = open_storage(f"s3://{bucket}", options)
    root.fs.mkdir(bucket)  # type: ignore[attr-defined]
    return {"storage_url": f"s3://{bucket}/proj", "storage_options": options}


def _remote(settings: dict[str, Any]) -> Storage:
    return open_storage(settings["storage_url"], settings["storage_options"])


def _init(root: Path, settings: dict[str, Any], *, train: bool = True) -> Project:
    project = Project.init(
        root, ListSource("digits-test", digits_subset(120, 40)), settings={**FAST, **settings}
    )
    if train:
        project.train()
    return project


# -- the interface, on each kind ---------------------------------------------------------


@pytest.fixture(scope="function", params=["folder", "memory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "folder":
        return open_storage(str(tmp_path / "store"))
    if request.param == "memory":
        return open_storage(f"memory://flywheel-{uuid.uuid4().hex[:8]}/root")
    settings = request.getfixturevalue("s3")
    return _remote(settings)


def test_put_get_exists_list_delete(storage: Storage) -> None:
    storage.put("a/b/one", b"1")
    storage.put("a/two", b"22")
    storage.put("a/two", b"2")  # replaced whole
    assert storage.get("a/b/one") == b"1"
    assert storage.get("a/two") == b"2"
    with storage.open("a/two") as fh:
        assert fh.read() == b"2"
    assert storage.exists("a/b/one") and not storage.exists("a/none")
    assert storage.list("a") == ["a/b/one", "a/two"]
    assert storage.list("nothing") == []
    assert storage.get_many(["a/two", "a/b/one"]) == [b"2", b"1"]
    storage.put_many({"c/x": b"x", "c/y": b"y"})
    assert storage.child("c").list() == ["x", "y"]
    assert storage.child("c").get("y") == b"y"
    assert storage.delete("a/two") is True
    assert storage.delete("a/two") is False
    storage.delete_tree("a")
    assert storage.list("a") == []
    assert storage.list() == ["c/x", "c/y"]


def test_replace_tree_holds_exactly_the_new_files(storage: Storage) -> None:
    storage.replace_tree("ck", {"t": b"old", "stale": b"s"})
    storage.replace_tree("ck", {"t": b"new", "m": b"meta"})
    assert storage.list("ck") == ["ck/m", "ck/t"]
    assert storage.get("ck/t") == b"new"


def test_a_missing_key_is_not_found_by_its_full_name(storage: Storage) -> None:
    with pytest.raises(NotFoundError) as info:
        storage.get("models/v9/model.safetensors")
    assert info.value.kind == "stored object"
    assert info.value.ident == storage.where("models/v9/model.safetensors")
    with pytest.raises(NotFoundError):
        storage.get_many(["models/v9/a", "models/v9/b"])


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../b"])
def test_a_key_that_climbs_out_is_refused(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="is not a storage key"):
        storage.put(key, b"x")


def test_blobs_on_a_remote_store_are_content_addressed(storage: Storage) -> None:
    blobs = BlobStore(storage.child("blobs"))
    digests = blobs.put_many([b"one", b"two", b"one"])
    assert digests == [sha256(b"one"), sha256(b"two"), sha256(b"one")]
    assert blobs.put(b"two") == sha256(b"two")
    assert storage.list("blobs") == sorted(f"blobs/{d[:2]}/{d[2:]}" for d in set(digests))
    read = blobs.reader(digests)
    assert [read(d) for d in digests] == [b"one", b"two", b"one"]
    assert blobs.delete(digests[0]) is True
    with pytest.raises(NotFoundError) as info:
        blobs.get(digests[0])
    assert (info.value.kind, info.value.ident) == ("blob", digests[0])


def test_the_default_is_the_project_folder_as_it_always_was(tmp_path: Path) -> None:
    project = _init(tmp_path / "p", {})
    root = project.settings.project_dir
    storage = project.services.ctx.storage
    assert isinstance(storage, LocalStorage) and storage.root == root
    assert project.blobs.root == root / "blobs"
    assert {SPEC, WEIGHTS} <= {p.name for p in (root / "models" / "v1").iterdir()}
    assert not (root / CACHE).exists() and not (root / "checkpoints" / "current").exists()
    project.close()


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://", "names no bucket or host"),
        ("nosuch://bucket/x", "'nosuch' is not a storage fsspec can write to"),
        ("https://example.com/models", "'https' is not a storage fsspec can write to"),
        ("relative/folder", "is a relative path"),
        ("s3://AKIA:secret@bucket/x", "with credentials"),
        ("s3://bucket/x?region=eu", "has a query or fragment"),
        ("simplecache::s3://bucket/x", "chains fsspec URLs"),
        ("gcs://bucket/x", "needs gcsfs"),
        ("   ", "storage_url is empty"),
    ],
)
def test_a_bad_storage_url_fails_at_settings_naming_the_problem(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match="storage_url") as info:
        Settings.load(tmp_path, storage_url=url)
    assert problem in str(info.value)
    assert "secret" not in str(info.value)  # credentials are not echoed


def test_blob_dir_and_storage_url_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unset blob_dir"):
        Settings.load(tmp_path, storage_url=str(tmp_path / "s"), blob_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="storage_options is set but storage_url is not"):
        Settings.load(tmp_path, storage_options={"anon": True})


def test_a_folder_url_is_made_a_plain_absolute_path(tmp_path: Path) -> None:
    assert Settings.load(tmp_path, storage_url=f"file://{tmp_path}/s/").storage_url == str(
        tmp_path / "s"
    )


# -- errors ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_storage_fails_on_open_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "p"
    project = _init(root, {}, train=False)
    project.close()
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    options = {
        "endpoint_url": endpoint,
        **CREDENTIALS,
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    with pytest.raises(StorageError) as info:
        Project.open(root, storage_url="s3://bucket/p", storage_options=options)
    assert "storage 's3://bucket/p' cannot reach" in str(info.value)
    assert "Could not connect to the endpoint URL" in str(info.value)


def test_a_missing_bucket_or_folder_fails_on_open(
    tmp_path: Path, s3: dict[str, Any], s3_endpoint: str
) -> None:
    root = tmp_path / "p"
    _init(root, {}, train=False).close()
    options = {"endpoint_url": s3_endpoint, **CREDENTIALS}
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Project.open(root, storage_url="s3://no-such-bucket/p", storage_options=options)
    with pytest.raises(StorageError, match="is the shared filesystem mounted"):
        Project.open(root, storage_url=str(tmp_path / "not-mounted"))


# -- the loop on S3 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def on_s3(
    tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str
) -> Iterator[tuple[Project, Storage]]:
    """A project whose models, checkpoints and blobs are in a bucket: v1 trained."""
    bucket = f"flywheel-{uuid.uuid4().hex[:12]}"
    options = {"endpoint_url": s3_endpoint, **CREDENTIALS}
    open_storage(f"s3://{bucket}", options).fs.mkdir(bucket)  # type: ignore[attr-defined]
    settings = {"storage_url": f"s3://{bucket}/proj", "storage_options": options}
    project = _init(tmp_path_factory.mktemp("s3") / "p", {**settings, "max_user_share": 1.0})
    yield project, _remote(settings)
    project.close()


def test_the_loop_runs_with_everything_on_s3(on_s3: tuple[Project, Storage]) -> None:
    project, remote = on_s3
    root = project.settings.project_dir
    # init and train: the blobs and v1 are in the bucket, nothing of them in the folder
    assert not (root / "blobs").exists() and not (root / "models").exists()
    keys = remote.list()
    assert {"models/v1/model.safetensors", "models/v1/spec.json"} <= set(keys)
    assert {k for k in keys if k.startswith("blobs/")} == _blob_keys(project)
    with project.db.session() as s:
        row = s.get(ModelVersion, 1)
        assert row is not None and row.artifact_dir == "models/v1"  # a key, not a place
    assert project.version_info(1).artifact_dir == remote.where("models/v1")
    # serve: predict and feedback over HTTP
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        ids, served_hashes = [], set()
        for i in range(300, 330):
            r = c.post(
                "/v1/predict",
                files={"file": ("x.png", digit_png(i), "image/png")},
                headers={"X-User-Id": f"u{i % 3}"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == 1
            ids.append((r.json()["prediction_id"], f"u{i % 3}"))
            served_hashes.add(sha256(digit_png(i)))
        for pid, user in ids:
            r = c.post(
                "/v1/feedback", json={"prediction_id": pid, "correct": True},
                headers={"X-User-Id": user},
            )  # fmt: skip
            assert r.status_code == 201, r.text
        # retrain: warm-started from v1 as read from the bucket, its checkpoint there too
        checkpoints: set[str] = set()
        result = project.retrain(on_epoch=lambda _: checkpoints.update(remote.list("checkpoints")))
        assert result.train is not None and result.train.model.version == 2
        assert result.train.model.parent == 1 and result.train.promoted
        assert checkpoints == {
            "checkpoints/current/state.json",
            "checkpoints/current/state.safetensors",
        }
        assert remote.list("checkpoints") == []  # dropped once the run was recorded
        assert {"models/v2/model.safetensors", "models/v2/spec.json"} <= set(remote.list())
        r = c.post("/v1/predict", files={"file": ("x.png", digit_png(5), "image/png")})
        assert r.json()["model_version"] == 2
    assert not (root / "models").exists()
    assert {k for k in remote.list() if k.startswith("blobs/")} == _blob_keys(project) | {
        f"blobs/{h[:2]}/{h[2:]}" for h in served_hashes
    }


def test_a_tampered_object_in_the_bucket_is_refused_by_name(
    on_s3: tuple[Project, Storage],
) -> None:
    project, remote = on_s3
    v1 = project.version_info(1)
    key = "models/v1/model.safetensors"
    good = remote.get(key)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    remote.put(key, bytes(bad))
    other = _machine(project, project.settings.project_dir.parent / "other")
    try:
        with pytest.raises(ModelError, match=r"model v1 in 's3://.*/models/v1': model.safetensors"):
            other.cache.load(1)
        # This machine verified it before: its cached copy (named by the hash) serves on.
        assert project.cache.load(1).version == 1
        # A changed cached copy is dropped and fetched again (here: refused again).
        cached = project.settings.project_dir / CACHE / v1.weights_sha256[:2]
        copy = cached / v1.weights_sha256[2:]
        copy.write_bytes(bytes(bad))
        with pytest.raises(ModelError, match="does not match the SHA-256"):
            project.cache.load(1)
        assert not copy.exists()
    finally:
        remote.put(key, good)
        other.close()
    assert project.cache.load(1).version == 1


def test_a_missing_object_is_named_and_a_503_over_http(on_s3: tuple[Project, Storage]) -> None:
    project, remote = on_s3
    key = "models/v1/model.safetensors"  # (a spec may be another version's, byte for byte)
    weights = remote.get(key)
    remote.delete(key)
    other = _machine(project, project.settings.project_dir.parent / "third")
    try:
        missing = re.escape("is incomplete: model.safetensors is missing")
        with pytest.raises(ModelError, match=missing):
            other.cache.load(1)
        admin, _ = other.create_key(["admin"])
        with TestClient(create_app(other.settings, other), base_url="http://127.0.0.1") as c:
            r = c.post("/v1/models/1/promote", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 503
        assert r.json()["detail"] == (
            f"model v1 in {remote.where('models/v1')!r} is incomplete: model.safetensors is missing"
        )
    finally:
        remote.put(key, weights)
        other.close()


def test_a_changed_serving_graph_in_the_bucket_is_exported_again(
    on_s3: tuple[Project, Storage], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    project, remote = on_s3
    key = "models/v1/serving.onnx"

    def backend(name: str, recorded: str | None) -> OnnxBackend:
        machine = _machine(project, tmp_path / name)
        ctx = machine.services.ctx
        folder = ArtifactFolder(ctx.storage, "models/v1", ctx.object_cache)
        served = load_backend(machine.cache.load(1), "onnx", artifact_dir=folder,
                              graph_sha256=recorded)  # fmt: skip
        machine.close()
        assert isinstance(served, OnnxBackend)
        return served

    recorded = backend("exports", None).graph_sha256  # exported once, kept in the bucket
    assert sha256(remote.get(key)) == recorded
    remote.put(key, remote.get(key) + b"\0")
    caplog.set_level(logging.WARNING, logger="flywheel.serving")
    again = backend("fresh", recorded)  # a machine that has no verified copy of it
    assert "serving.onnx does not match the SHA-256 recorded" in caplog.text
    assert sha256(remote.get(key)) == again.graph_sha256


def _machine(project: Project, root: Path) -> Project:
    """Another machine's project on ``project``'s database and storage: its own folder,
    with the same flywheel.toml."""
    root.mkdir()
    (root / CONFIG_FILE).write_text((project.settings.project_dir / CONFIG_FILE).read_text())
    return Project.open(root, database_url=project.settings.db_url)


def _blob_keys(project: Project) -> set[str]:
    with project.db.session() as s:
        hashes = set(s.scalars(select(Example.input_hash)))
    return {f"blobs/{h[:2]}/{h[2:]}" for h in hashes}


# -- a shared folder: two machines -------------------------------------------------------


def test_two_projects_on_a_shared_folder_serve_each_others_models(tmp_path: Path) -> None:
    shared = tmp_path / "shared"  # mounted on both machines
    shared.mkdir()
    settings = {
        "storage_url": str(shared),
        "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
        "user_key_file": str(tmp_path / "user-keys.json"),  # a secret both machines hold
        "max_user_share": 1.0,
    }
    a = _init(tmp_path / "machine-a", settings)  # trains v1
    b_root = tmp_path / "machine-b"
    b = _machine(a, b_root)
    assert not (b_root / "models").exists() and not (b_root / "blobs").exists()
    assert (shared / "models" / "v1" / WEIGHTS).is_file()
    # B serves the model A trained, and logs its calls where A reads them.
    with TestClient(create_app(b.settings, b), base_url="http://127.0.0.1") as c:
        served = []
        for i in range(300, 320):
            r = c.post(
                "/v1/predict",
                files={"file": ("x.png", digit_png(i), "image/png")},
                headers={"X-User-Id": "u1"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == 1
            served.append(r.json()["prediction_id"])
    assert b.stored_input(served[0]) == a.stored_input(served[0]) == digit_png(300)
    for pid in served:
        a.record_feedback(pid, correct=True, user_id="u1")
    # A retrains; B's model cache loads v2 from the shared folder.
    result = a.retrain()
    assert result.train is not None and result.train.model.version == 2
    assert b.cache.load(2).version == 2
    with b.db.session() as s:
        dirs = s.scalars(select(ModelVersion.artifact_dir).order_by(ModelVersion.version))
        assert list(dirs) == ["models/v1", "models/v2"]
    a.close()
    b.close()


def test_a_run_interrupted_on_one_machine_resumes_on_another(tmp_path: Path) -> None:
    storage = f"memory://flywheel-{uuid.uuid4().hex[:8]}/proj"
    settings = {
        "storage_url": storage,
        "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
        "epochs": 4,
        "patience": 4,
    }
    a = _init(tmp_path / "a", settings, train=False)

    class Stop(Exception):
        pass

    def stop_after_two(report: object) -> None:
        if getattr(report, "epoch", 0) == 2:
            raise Stop

    with pytest.raises(Stop):
        a.train(on_epoch=stop_after_two)
    remote = open_storage(storage)
    assert remote.list("checkpoints") == [
        "checkpoints/current/state.json",
        "checkpoints/current/state.safetensors",
    ]
    meta = json.loads(remote.get("checkpoints/current/state.json"))
    assert meta["epoch"] == 2 and len(meta["tensors_sha256"]) == 64
    b = _machine(a, tmp_path / "b")
    assert b.has_interrupted_run()
    # Torn: tensors of another write beside the JSON: refused, not half-loaded.
    tensors = remote.get("checkpoints/current/state.safetensors")
    torn = bytearray(tensors)
    torn[len(torn) // 2] ^= 0x01
    remote.put("checkpoints/current/state.safetensors", bytes(torn))
    with pytest.raises(ModelError, match=r"checkpoint in 'memory://.*' cannot be read: .*torn"):
        b.train(resume=True)
    remote.put("checkpoints/current/state.safetensors", tensors)
    resumed = b.train(resume=True)
    assert resumed.model.metrics["resumed_from_epoch"] == 3
    assert not a.has_interrupted_run()
    a.close()
    b.close()
