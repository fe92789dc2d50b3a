"""BlobStore: a content-addressed folder keyed by SHA-256."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from flywheel.errors import NotFoundError
from flywheel.store import BlobStore, sha256
from flywheel.store import blobs as blobs_module


@pytest.fixture(scope="function")
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")  # the root does not exist yet


def _payload(seed: int, n: int = 4096) -> bytes:
    return random.Random(seed).randbytes(n)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_then_get_returns_the_same_bytes(store: BlobStore) -> None:
    data = _payload(0)
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert digest == sha256(data)
    assert store.get(digest) == data
    assert store.exists(digest) is True


def test_empty_blob_roundtrips(store: BlobStore) -> None:
    digest = store.put(b"")
    assert digest == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert store.get(digest) == b""


def test_same_content_gives_same_digest_and_one_file(store: BlobStore) -> None:
    data = _payload(1)
    first = store.put(data)
    second = store.put(bytes(data))
    assert first == second
    assert _files(store.root) == [store.root / first[:2] / first[2:]]


def test_different_content_gives_different_files(store: BlobStore) -> None:
    a, b = store.put(_payload(2)), store.put(_payload(3))
    assert a != b
    assert _files(store.root) == sorted([store.path(a), store.path(b)])


def test_path_layout_is_two_hex_chars_then_the_rest(store: BlobStore) -> None:
    data = b"hello flywheel"
    digest = store.put(data)
    expected = store.root / digest[:2] / digest[2:]
    assert store.path(digest) == expected
    assert expected.read_bytes() == data
    assert len(expected.parent.name) == 2
    assert len(expected.name) == 62


def test_get_of_an_unknown_digest_raises_not_found(store: BlobStore) -> None:
    store.put(b"something else")
    unknown = sha256(b"never stored")
    assert store.exists(unknown) is False
    with pytest.raises(NotFoundError) as exc_info:
        store.get(unknown)
    assert exc_info.value.kind == "blob"
    assert exc_info.value.ident == unknown


def test_no_temporary_files_are_left_behind(store: BlobStore) -> None:
    digests = [store.put(_payload(seed, n=seed * 100)) for seed in range(10)]
    store.put(_payload(0, n=0))  # again: the early return path
    files = _files(store.root)
    assert list(store.root.rglob(".tmp-*")) == []
    assert files == sorted({store.path(d) for d in digests})


def test_failed_write_leaves_no_temporary_file_and_no_blob(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(src: str, dst: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(blobs_module.os, "replace", broken_replace)
    data = _payload(4)
    with pytest.raises(OSError, match="disk full"):
        store.put(data)
    monkeypatch.undo()
    assert _files(store.root) == []
    assert store.exists(sha256(data)) is False
