"""Where models, checkpoints and blobs live: one small interface over a folder or any
fsspec URL (``storage_url``), so that every machine of a deployment reads the same ones.

A key is a ``/``-separated path below the storage's root: ``blobs/ab/cdef…``,
``models/v3/model.safetensors``, ``checkpoints/current/state.json``. The database keeps
only keys and hashes, never where the root is.

- ``LocalStorage``: a folder on this machine, or one every machine mounts (a shared
  filesystem). Without ``storage_url`` it is the project folder itself, laid out as it
  always was (blobs in ``blob_dir``); writes go to a temporary file, are fsynced and
  renamed over the target, so a reader sees the old object or the new one.
- ``FsspecStorage``: anything fsspec reaches (``s3://bucket/prefix`` with
  ``pip install 'flywheel-ml[s3]'``; ``memory://`` for tests). An object store's PUT is
  atomic on its own; on a filesystem the object is written under a temporary key and
  moved over the target.

Every failure comes out as a flywheel error: a missing object ``NotFoundError``, storage
that cannot be reached or written ``StorageError`` (the URL and the key named), so an API
client never sees a raw traceback. What needs a local file (ONNX Runtime) or is read
again and again (a version's weights) from a remote store goes through ``ObjectCache``:
local copies named by their SHA-256, verified by the reader before use.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from fsspec.core import url_to_fs

from flywheel.errors import FlywheelError, NotFoundError, StorageError
from flywheel.settings import Settings, check_storage_url

__all__ = [
    "FsspecStorage",
    "LocalStorage",
    "ObjectCache",
    "Storage",
    "blob_storage",
    "open_storage",
    "project_storage",
]

log = logging.getLogger("flywheel.store")

T = TypeVar("T")

#: where the models, checkpoints and blobs go below a ``storage_url``
BLOBS = "blobs"
#: object stores: one PUT is atomic, and there are no folders to create or rename
_OBJECT_STORES = frozenset(
    {"s3", "s3a", "gcs", "gs", "abfs", "az", "adl", "oci", "oss", "tos", "tosfs", "memory"}
)


class Storage(ABC):
    """Objects under keys. ``get`` and ``open`` raise ``NotFoundError`` for a missing
    key; a remote store's every method raises ``StorageError`` when it cannot be
    reached (a folder's failed write is the ``OSError`` it always was)."""

    #: the root, as configured (a folder or an fsspec URL), for messages
    url: str

    @abstractmethod
    def where(self, key: str = "") -> str:
        """The full name of ``key`` (a path, or a URL): what messages show."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, whole or not at all (readers never see a part)."""

    @abstractmethod
    def open(self, key: str) -> IO[bytes]:
        """``key`` open for reading (a context manager)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """Every key below ``prefix`` (a folder-like prefix), sorted, relative to the root."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was there."""

    @abstractmethod
    def delete_tree(self, prefix: str) -> None:
        """Remove every key below ``prefix`` (nothing there is not an error)."""

    @abstractmethod
    def child(self, prefix: str) -> Storage:
        """The same storage rooted at ``prefix``."""

    def get_many(self, keys: Sequence[str]) -> builtins.list[bytes]:
        """The objects of ``keys``, in order (an object store fetches them concurrently)."""
        return [self.get(k) for k in keys]

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """``put`` each (an object store sends them concurrently)."""
        for key, data in items.items():
            self.put(key, data)

    def replace_tree(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """Make ``prefix`` hold exactly ``files`` (name → bytes), written in their order.
        A folder is swapped whole; on an object store the last file written is the one a
        reader should check the others against (a crash can leave a mix)."""
        stale = set(self.list(prefix)) - {_join(prefix, name) for name in files}
        for name, data in files.items():
            self.put(_join(prefix, name), data)
        for key in sorted(stale):
            self.delete(key)

    def local_path(self, key: str) -> Path | None:
        """The file of ``key`` on this machine, when it is one (None: a remote object)."""
        return None

    @abstractmethod
    def check(self) -> None:
        """Raise ``StorageError`` unless the root can be reached (and exists)."""


class LocalStorage(Storage):
    """A folder: the project folder (the default layout), or a shared one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _clean(key) if key else self.root

    def where(self, key: str = "") -> str:
        return str(self._path(key))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError("stored object", str(path)) from None
        except OSError as exc:
            raise StorageError(f"{str(path)!r} cannot be read: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        """Atomic: a temporary file in the target's folder, fsynced, renamed over it."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        except OSError as exc:
            raise StorageError(f"{str(target)!r} cannot be written: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open(self, key: str) -> IO[bytes]:
        path = self._path(key)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise NotFoundError("stored object", str(path)) from None
        except OSError as exc:
            raise StorageError(f"{str(path)!r} cannot be read: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> builtins.list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def replace_tree(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """Written into a sibling ``<prefix>.tmp`` folder, then swapped in by two renames:
        a crash at any point leaves the previous folder, or the new one, whole."""
        folder = self._path(prefix)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self._path(prefix))

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(
                f"storage_url {self.url!r} is not a folder on this machine (is the shared "
                "filesystem mounted?); create it, or mount it there"
            )


class FsspecStorage(Storage):
    """Any filesystem fsspec reaches: an object store (S3 and S3-compatible servers,
    GCS, Azure) or a remote filesystem (SFTP, HDFS ...)."""

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = str(protocol)
        self._atomic_put = self.protocol in _OBJECT_STORES

    def _path(self, key: str) -> str:
        return f"{self.root}/{_clean(key)}" if key else self.root

    def where(self, key: str = "") -> str:
        return f"{self.url.rstrip('/')}/{_clean(key)}" if key else self.url

    def _call(self, verb: str, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, its failures as flywheel's errors naming the key."""
        try:
            return fn()
        except FileNotFoundError as exc:
            if _no_bucket(exc):
                raise StorageError(
                    f"storage {self.url!r} cannot {verb} {key!r}: its bucket does not exist"
                ) from None
            raise NotFoundError("stored object", self.where(key)) from None
        except FlywheelError:
            raise
        except Exception as exc:  # botocore's, aiohttp's, the network's: all of them
            raise StorageError(
                f"storage {self.url!r} cannot {verb} {key!r}: {_brief(exc)}"
            ) from exc

    def get(self, key: str) -> bytes:
        return self._call("read", key, lambda: bytes(self.fs.cat_file(self._path(key))))

    def get_many(self, keys: Sequence[str]) -> builtins.list[bytes]:
        if len(keys) < 2:
            return [self.get(k) for k in keys]
        paths = [self._path(k) for k in keys]
        got = self._call("read", keys[0], lambda: self.fs.cat(paths, on_error="return"))
        out = []
        for key, path in zip(keys, paths, strict=True):
            value = got.get(path, got.get(self.fs._strip_protocol(path)))
            if isinstance(value, bytes | bytearray):
                out.append(bytes(value))
                continue
            failure = value if isinstance(value, BaseException) else FileNotFoundError(path)
            out.append(self._call("read", key, functools.partial(_reraise, failure)))
        return out

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self._atomic_put:
            self._call("write", key, lambda: self.fs.pipe_file(path, data))
            return
        tmp = f"{path.rsplit('/', 1)[0]}/.tmp-{uuid.uuid4().hex}"

        def write() -> None:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(tmp, data)
            try:
                self.fs.mv(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.fs.rm_file(tmp)
                raise

        self._call("write", key, write)

    def put_many(self, items: Mapping[str, bytes]) -> None:
        if not self._atomic_put or len(items) < 2:
            super().put_many(items)
            return
        values = {self._path(k): v for k, v in items.items()}
        self._call("write", next(iter(items)), lambda: self.fs.pipe(values))

    def open(self, key: str) -> IO[bytes]:
        return self._call("read", key, lambda: self.fs.open(self._path(key), "rb"))

    def exists(self, key: str) -> bool:
        path = self._path(key)

        def probe() -> bool:  # not fs.exists: it answers False when the store is unreachable
            try:
                self.fs.info(path)
            except FileNotFoundError as exc:
                if _no_bucket(exc):
                    raise
                return False
            return True

        return self._call("read", key, probe)

    def list(self, prefix: str = "") -> builtins.list[str]:
        base = self._path(prefix)
        found = self._call("list", prefix, lambda: self.fs.find(base))
        start = len(self.fs._strip_protocol(self.root).rstrip("/")) + 1
        keys = (self.fs._strip_protocol(p)[start:] for p in found)
        return sorted(k for k in keys if not k.rsplit("/", 1)[-1].startswith(".tmp-"))

    def delete(self, key: str) -> bool:
        path = self._path(key)

        if not self.exists(key):
            return False
        self._call("delete", key, lambda: self.fs.rm_file(path))
        return True

    def delete_tree(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)

    def child(self, prefix: str) -> FsspecStorage:
        return FsspecStorage(self.fs, self._path(prefix), self.where(prefix))

    def check(self) -> None:
        bucket = self.root.split("/", 1)[0]
        if self.protocol not in _OBJECT_STORES or self.protocol == "memory":
            self._call("reach", "", lambda: self.fs.makedirs(self.root, exist_ok=True))
            return
        try:
            self._call("reach", "", lambda: self.fs.info(bucket))
        except NotFoundError:
            raise StorageError(
                f"storage {self.url!r}: bucket {bucket!r} does not exist (or these "
                "credentials cannot see it); create it first"
            ) from None


class ObjectCache:
    """Local copies of remote objects, named by their SHA-256 (``<folder>/ab/cdef…``).

    ``get`` answers only a copy that still hashes to its name (a changed one is dropped
    and fetched again); the caller verifies what it fetched against the hash it expects
    before ``add``-ing it, so a tampered remote object is never used, cached or not.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / sha256[2:]

    def get(self, sha256: str) -> bytes | None:
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            log.warning("%s does not hash to its name; fetching it again", path)
            path.unlink(missing_ok=True)
            return None
        return data

    def add(self, data: bytes) -> Path:
        """Keep ``data``; its path (named by its SHA-256)."""
        path = self.path(hashlib.sha256(data).hexdigest())
        if not path.exists():
            LocalStorage(self.folder).put(path.relative_to(self.folder).as_posix(), data)
        return path

    def discard(self, sha256s: Sequence[str]) -> None:
        """Drop the copies of these hashes (a withdrawn version's files)."""
        for digest in sha256s:
            if digest:
                self.path(digest).unlink(missing_ok=True)


# -- from settings --------------------------------------------------------------------


def open_storage(url: str, options: Mapping[str, Any] | None = None) -> Storage:
    """The storage at ``url`` (checked as ``check_storage_url`` does): a folder, or an
    fsspec filesystem built with ``options`` (e.g. ``endpoint_url``, ``key``, ``secret``
    for an S3-compatible server)."""
    try:
        url = check_storage_url(url)
    except ValueError as exc:
        raise StorageError(str(exc)) from None
    if "://" not in url:  # a folder (checked: absolute)
        return LocalStorage(Path(url))
    try:
        fs, root = url_to_fs(url, **dict(options or {}))
    except Exception as exc:  # an option the filesystem does not take, a missing module
        raise StorageError(f"storage {url!r} cannot be opened: {_brief(exc)}") from exc
    return FsspecStorage(fs, str(root), url)


def project_storage(settings: Settings) -> Storage:
    """Where a project's models and checkpoints live: ``storage_url``, or the project
    folder (``models/``, ``checkpoints/`` as ever)."""
    if settings.storage_url is None:
        return LocalStorage(settings.project_dir)
    return open_storage(settings.storage_url, settings.storage_options)


def blob_storage(settings: Settings, root: Storage) -> Storage:
    """Where a project's blobs live: ``<storage_url>/blobs``, or ``blob_dir`` (default
    ``<project>/blobs``) when there is no ``storage_url``."""
    if settings.storage_url is None:
        return LocalStorage(settings.blobs)
    return root.child(BLOBS)


# -- helpers --------------------------------------------------------------------------


def _clean(key: str) -> str:
    """A key as a relative path of plain parts; one that would climb out is refused."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts or key.startswith("/"):
        raise StorageError(f"{key!r} is not a storage key (a relative path without '..')")
    return "/".join(parts)


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}" if prefix else name


def _no_bucket(exc: BaseException) -> bool:
    return "bucket does not exist" in str(exc).lower()


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _reraise(exc: BaseException) -> bytes:
    raise exc
