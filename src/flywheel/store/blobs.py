"""A content-addressed folder: ``<root>/ab/cdef...`` keyed by SHA-256."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from flywheel.errors import NotFoundError

__all__ = ["BlobStore", "sha256"]

_DIGEST = re.compile(r"[0-9a-f]{64}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise NotFoundError("blob", digest)
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        """Store ``data`` once; returns its digest. The write is atomic (rename)."""
        digest = sha256(data)
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError("blob", digest) from None

    def delete(self, digest: str) -> bool:
        """Remove a blob; True when it was there."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def exists(self, digest: str) -> bool:
        return bool(_DIGEST.fullmatch(digest)) and self.path(digest).exists()
