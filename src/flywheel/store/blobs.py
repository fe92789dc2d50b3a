"""Content-addressed blobs: ``<root>/ab/cdef...`` keyed by SHA-256, in a folder (the
default: ``<project>/blobs``) or below any ``Storage`` (``<storage_url>/blobs``)."""

from __future__ import annotations

import hashlib
import os  # noqa: F401  (LocalStorage renames with os.replace: tests patch it from here)
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from flywheel.errors import NotFoundError, StorageError
from flywheel.store.storage import LocalStorage, Storage

__all__ = ["BlobStore", "sha256"]

_DIGEST = re.compile(r"[0-9a-f]{64}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path | Storage) -> None:
        self.storage: Storage = root if isinstance(root, Storage) else LocalStorage(Path(root))

    @property
    def root(self) -> Path:
        """The blob folder on this machine (``StorageError`` for a remote store)."""
        path = self.storage.local_path("")
        if path is None:
            raise StorageError(f"the blobs in {self.storage.url!r} are not a folder here")
        return path

    @staticmethod
    def key(digest: str) -> str:
        if not _DIGEST.fullmatch(digest):
            raise NotFoundError("blob", digest)
        return f"{digest[:2]}/{digest[2:]}"

    def path(self, digest: str) -> Path:
        return self.root / self.key(digest)

    def put(self, data: bytes) -> str:
        """Store ``data`` once; returns its digest. The write is atomic (rename, or one PUT)."""
        digest = sha256(data)
        key = self.key(digest)
        if not self.storage.exists(key):
            self.storage.put(key, data)
        return digest

    def put_many(self, items: Sequence[bytes]) -> list[str]:
        """``put`` each; their digests in order (a remote store gets them concurrently)."""
        if isinstance(self.storage, LocalStorage):
            return [self.put(data) for data in items]
        unique = {sha256(data): data for data in items}
        self.storage.put_many({self.key(d): data for d, data in unique.items()})
        return [sha256(data) for data in items]

    def get(self, digest: str) -> bytes:
        try:
            return self.storage.get(self.key(digest))
        except NotFoundError:
            raise NotFoundError("blob", digest) from None

    def reader(self, digests: Sequence[str]) -> Callable[[str], bytes]:
        """A ``get`` for ``digests`` (a remote store fetches them all at once, first)."""
        if isinstance(self.storage, LocalStorage) or len(digests) < 2:
            return self.get
        unique = sorted(set(digests))
        try:
            found: dict[str, bytes] = dict(
                zip(unique, self.storage.get_many([self.key(d) for d in unique]), strict=True)
            )
        except NotFoundError:  # one is gone: say which, as ``get`` would
            return self.get
        return lambda digest: found[digest] if digest in found else self.get(digest)

    def delete(self, digest: str) -> bool:
        """Remove a blob; True when it was there."""
        return self.storage.delete(self.key(digest))

    def exists(self, digest: str) -> bool:
        return bool(_DIGEST.fullmatch(digest)) and self.storage.exists(self.key(digest))
