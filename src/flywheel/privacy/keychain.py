"""End-user ids as keyed hashes: the key chain and its file.

A pseudonym is ``u_`` + 32 hex digits of HMAC-SHA256 under a chain of keys::

    p0 = raw id;  p(i+1) = "u_" + HMAC(key_i, p_i)[:32]

The chain lives in ``user-keys.json`` (mode 0600) in the project folder
(``Settings.user_key_file``). Checking it against the store, rotating it and re-keying
the store are ``flywheel.privacy.identity``'s and ``flywheel.privacy.pseudonym``'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from flywheel.errors import ConfigError, InputError

__all__ = [
    "PSEUDONYM",
    "PSEUDONYM_ANYWHERE",
    "USER_ID",
    "Pseudonymizer",
    "check_user_id",
    "fingerprint",
    "hash_step",
    "key_file_lock",
    "read_keys",
    "seed_user_key",
    "write_keys",
]

PSEUDONYM = re.compile(r"^u_[0-9a-f]{32}$")
PSEUDONYM_ANYWHERE = re.compile(r"u_[0-9a-f]{32}")
#: what a client may send as a user id
USER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def check_user_id(user_id: str | None) -> str | None:
    """A raw end-user id, checked (None when absent or empty)."""
    if user_id is None or user_id == "":
        return None
    if not USER_ID.match(user_id):
        raise InputError(
            "user id must be 1-128 characters of letters, digits and . _ : @ -; "
            f"got {user_id[:40]!r}{'...' if len(user_id) > 40 else ''}"
        )
    return user_id


def hash_step(key: bytes, value: str) -> str:
    """One link of the chain: ``u_`` + 32 hex digits of HMAC-SHA256(key, value)."""
    return "u_" + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def fingerprint(keys: list[bytes]) -> str:
    """Identifies a key chain without revealing it."""
    h = hashlib.sha256(b"flywheel-user-keys")
    for k in keys:
        h.update(hashlib.sha256(k).digest())
    return h.hexdigest()


def read_keys(path: Path) -> list[bytes]:
    try:
        doc = json.loads(path.read_text())
        keys = [bytes.fromhex(k) for k in doc["keys"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the user-id key file {str(path)!r}: {exc}") from exc
    if not keys or any(len(k) < 16 for k in keys):
        raise ConfigError(f"the user-id key file {str(path)!r} holds no usable key")
    return keys


def write_keys(path: Path, keys: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": [k.hex() for k in keys]}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def key_file_lock(path: Path) -> Iterator[None]:
    """One process at a time creates or rotates the chain (server workers start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Pseudonymizer:
    """Hashes raw user ids with the project's key chain (created on first use)."""

    def __init__(self, path: Path, keys: list[bytes]) -> None:
        self.path = path
        self.keys = keys

    def __call__(self, raw: str) -> str:
        out = raw
        for k in self.keys:
            out = hash_step(k, out)
        return out

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.keys)


def seed_user_key(path: Path, key: bytes) -> None:
    """Give a new project (no key yet, no users) a chosen key at ``path`` (its
    ``Settings.user_keys``): reproducible demos and benchmarks. A real project's key is
    random."""
    if path.exists():
        raise ConfigError(f"{str(path)!r} exists: this project has its key already")
    if len(key) < 16:
        raise ConfigError("a user-id key needs at least 16 bytes")
    write_keys(path, [key])
