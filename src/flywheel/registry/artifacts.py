"""Model artifacts: ``model.safetensors`` + ``spec.json``, hashed when written and
verified against those hashes whenever they are read. Never pickle.

A version's files live in an ``ArtifactFolder``: a key (``models/v3``) of the project's
storage: the project folder, a shared one, or an fsspec URL. From a remote store they
are read through a cache on this machine named by their SHA-256, and verified like a
local file: a changed object is refused by name wherever it lies."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save, save_file
from torch import nn

from flywheel.errors import ConfigError, ContractError, ModelError, NotFoundError, StorageError
from flywheel.models import ModelSpec, create_model
from flywheel.store.storage import LocalStorage, ObjectCache, Storage

__all__ = [
    "SPEC",
    "WEIGHTS",
    "ArtifactFolder",
    "Hashes",
    "load_artifact",
    "read_verified",
    "save_artifact",
]

WEIGHTS = "model.safetensors"
SPEC = "spec.json"


@dataclass(frozen=True)
class Hashes:
    """The SHA-256 of an artifact's files, as recorded at registration (None: not
    recorded, e.g. a version registered before spec hashes were kept)."""

    weights: str | None = None
    spec: str | None = None


@dataclass(frozen=True)
class ArtifactFolder:
    """One version's files: ``key`` of ``storage`` (``models/v3``); a remote store's are
    read through ``cache``."""

    storage: Storage
    key: str
    cache: ObjectCache | None = None

    @classmethod
    def at(cls, folder: str | Path | ArtifactFolder) -> ArtifactFolder:
        """A folder on this machine (as the registry wrote them before ``storage_url``)."""
        if isinstance(folder, ArtifactFolder):
            return folder
        path = Path(folder)
        return cls(LocalStorage(path.parent), path.name)

    @classmethod
    def of(cls, storage: Storage, artifact_dir: str, cache: ObjectCache | None) -> ArtifactFolder:
        """A version's folder as the registry records it: a key of ``storage``
        (``models/v3``), or an absolute folder here (recorded so by an old version)."""
        if Path(artifact_dir).is_absolute():
            return cls.at(artifact_dir)
        return cls(storage, artifact_dir, cache)

    def __str__(self) -> str:
        return self.storage.where(self.key)

    def _key(self, name: str) -> str:
        return f"{self.key}/{name}"

    def local(self, name: str = "") -> Path | None:
        """The file (or, without ``name``, the folder) on this machine, when the storage
        is a folder here."""
        return self.storage.local_path(self._key(name) if name else self.key)

    def read(self, name: str, sha256: str | None, what: str) -> bytes:
        """A file's bytes, refused unless they hash to ``sha256`` (None: not checked)."""
        path = self.local(name)
        if path is not None:
            return read_verified(path, sha256, what)
        where = f"{what} in {str(self)!r}"
        cached = None if self.cache is None or not sha256 else self.cache.get(sha256)
        if cached is not None:
            return cached
        try:
            data = self.storage.get(self._key(name))
        except NotFoundError:
            raise ModelError(f"{where} is incomplete: {name} is missing") from None
        except StorageError as exc:
            raise ModelError(f"{where} cannot be read: {name}: {exc}") from exc
        _check(data, sha256, where, name)
        if self.cache is not None:
            self.cache.add(data)
        return data

    def fetch(self, name: str, sha256: str | None) -> tuple[Path, str] | None:
        """(a file on this machine, its SHA-256) for ``name``, unverified (the caller
        compares the hash); None when there is none. ``sha256``: the hash the caller
        expects, whose cached copy is used without asking the store."""
        path = self.local(name)
        if path is not None:
            if not path.exists():
                return None
            return path, hashlib.sha256(path.read_bytes()).hexdigest()
        cache = self._cache()
        if sha256 and cache.get(sha256) is not None:
            return cache.path(sha256), sha256
        try:
            data = self.storage.get(self._key(name))
        except NotFoundError:
            return None
        except StorageError as exc:
            raise ModelError(f"{str(self)!r} cannot be read: {name}: {exc}") from exc
        return cache.add(data), hashlib.sha256(data).hexdigest()

    def write(self, name: str, data: bytes) -> str:
        """Store ``name`` (atomic); its SHA-256."""
        try:
            self.storage.put(self._key(name), data)
        except StorageError as exc:
            raise ModelError(f"{str(self)!r} cannot be written: {name}: {exc}") from exc
        if self.local(name) is None and self.cache is not None:
            self.cache.add(data)
        return hashlib.sha256(data).hexdigest()

    def write_with(self, name: str, make: Callable[[Path], None]) -> tuple[Path, str]:
        """Store the file ``make(path)`` writes (atomic: workers may race); (a file on
        this machine holding it, its SHA-256)."""
        path = self.local(name)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{name}.{os.getpid()}.{threading.get_ident()}"
            make(tmp)
            os.replace(tmp, path)
            return path, hashlib.sha256(path.read_bytes()).hexdigest()
        with tempfile.TemporaryDirectory(prefix="flywheel-") as scratch:
            made = Path(scratch) / name
            make(made)
            data = made.read_bytes()
        self.write(name, data)
        return self._cache().add(data), hashlib.sha256(data).hexdigest()

    def remove(self) -> None:
        """Every file of the folder (nothing there is not an error)."""
        self.storage.delete_tree(self.key)

    def _cache(self) -> ObjectCache:
        if self.cache is None:
            raise ModelError(f"{str(self)!r} is remote and no local cache was given for it")
        return self.cache


def _check(data: bytes, sha256: str | None, where: str, name: str) -> None:
    if sha256:
        found = hashlib.sha256(data).hexdigest()
        if found != sha256:
            raise ModelError(
                f"{where}: {name} does not match the SHA-256 recorded when it was "
                f"registered (expected {sha256[:12]}…, found {found[:12]}…): the file was "
                "changed or damaged, and is not loaded"
            )


def save_artifact(model: nn.Module, spec: ModelSpec, folder: Path | ArtifactFolder) -> Hashes:
    """Write weights and spec into ``folder``; returns the SHA-256 of both files as
    written (read back from the disk, for a folder here)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    spec_text = json.dumps(spec.to_json(), indent=2, sort_keys=True)
    here = folder if isinstance(folder, Path) else folder.local()
    if here is not None:  # a folder on this machine: written as it always was
        here.mkdir(parents=True, exist_ok=True)
        tmp = here / (WEIGHTS + ".tmp")
        save_file(tensors, str(tmp), metadata={"arch": spec.arch})
        os.replace(tmp, here / WEIGHTS)
        (here / SPEC).write_text(spec_text)
        return Hashes(
            weights=hashlib.sha256((here / WEIGHTS).read_bytes()).hexdigest(),
            spec=hashlib.sha256((here / SPEC).read_bytes()).hexdigest(),
        )
    assert isinstance(folder, ArtifactFolder)
    weights = folder.write(WEIGHTS, save(tensors, metadata={"arch": spec.arch}))
    return Hashes(weights=weights, spec=folder.write(SPEC, spec_text.encode()))


def read_verified(path: Path, sha256: str | None, what: str) -> bytes:
    """A file's bytes, refused unless they hash to ``sha256`` (None: not checked)."""
    where = f"{what} in {str(path.parent)!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{where} is incomplete: {path.name} is missing") from None
    except OSError as exc:
        raise ModelError(f"{where} cannot be read: {path.name}: {exc}") from exc
    _check(data, sha256, where, path.name)
    return data


def load_artifact(
    folder: Path | ArtifactFolder, hashes: Hashes | None = None, *, what: str = "model artifact"
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model from its spec and load its safetensors weights, each file first
    verified against ``hashes``."""
    hashes = hashes or Hashes()
    files = ArtifactFolder.at(folder)
    spec_bytes = files.read(SPEC, hashes.spec, what)
    weights = files.read(WEIGHTS, hashes.weights, what)
    try:
        spec = ModelSpec.from_json(json.loads(spec_bytes))
        model = create_model(spec)
        model.load_state_dict(load_tensors(weights), strict=True)
    except (SafetensorError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{what} in {str(files)!r} cannot be loaded: {exc}") from exc
    except (ConfigError, ContractError) as exc:  # a plugin's architecture missing or broken
        raise ModelError(f"{what} in {str(files)!r} cannot be loaded: {exc}") from exc
    model.eval()
    return model, spec
