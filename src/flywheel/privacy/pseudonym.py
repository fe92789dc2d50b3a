"""End-user ids stored only as keyed hashes, with a key that can be rotated: the chain,
its key file, and re-keying the store in the caller's transaction (opening and
rotating the chain, which commit, are ``flywheel.privacy.identity``'s).

A pseudonym is ``u_`` + 32 hex digits of HMAC-SHA256 under a chain of keys::

    p0 = raw id;  p(i+1) = "u_" + HMAC(key_i, p_i)[:32]

Rotating appends a key and maps every stored pseudonym ``p`` to ``HMAC(new, p)``, so
the store is re-keyed without ever knowing a raw id, and a leaked older key alone no
longer links a raw id to its rows. The chain lives in ``user-keys.json`` (mode 0600)
in the project folder (``Settings.user_key_file``); the database keeps its fingerprint,
so a key file that does not belong to the store is refused rather than silently
splitting every user in two.

A rotation is crash-safe: the new chain is written beside the old one
(``.next``), the database is re-keyed in one transaction that also records the new
fingerprint, and only then does the new file replace the old; an interrupted
rotation is finished or discarded by the next open, whichever the database says.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flywheel.errors import ConfigError, InputError, NotFoundError
from flywheel.store.schema import (
    JSON_SUMMARIES,
    Example,
    Feedback,
    Prediction,
    PrivacyCharge,
    StoreMeta,
    User,
)

__all__ = [
    "FINGERPRINT_KEY",
    "PSEUDONYM",
    "USER_ID",
    "Pseudonymizer",
    "check_user_id",
    "find_user",
    "fingerprint",
    "hash_step",
    "key_file_lock",
    "read_keys",
    "rekey_users",
    "seed_user_key",
    "stored_fingerprint",
    "write_keys",
]

PSEUDONYM = re.compile(r"^u_[0-9a-f]{32}$")
PSEUDONYM_ANYWHERE = re.compile(r"u_[0-9a-f]{32}")
#: what a client may send as a user id
USER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
#: the ``store_meta`` row holding the chain's fingerprint
FINGERPRINT_KEY = "user_key_fingerprint"


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


def stored_fingerprint(s: Session) -> str | None:
    """The fingerprint of the chain the store's user ids were hashed with (None: none yet)."""
    row = s.get(StoreMeta, FINGERPRINT_KEY)
    return None if row is None else row.value


def find_user(s: Session, user_id: str, chain: Callable[[str], str]) -> User:
    """A user named by raw id (hashed with ``chain``) or by the pseudonym
    `flywheel users` lists; ``NotFoundError`` when there is none."""
    if PSEUDONYM.match(user_id) and (row := s.get(User, user_id)) is not None:
        return row
    row = s.get(User, chain(check_user_id(user_id) or ""))
    if row is None:
        raise NotFoundError("user", user_id)
    return row


def rekey_users(s: Session, mapping: Callable[[str], str]) -> int:
    """Rename every user id through ``mapping`` in every table that holds one.

    Runs inside the caller's transaction; returns how many users were renamed.
    """
    users = list(s.scalars(select(User)))
    renames = {u.id: mapping(u.id) for u in users}
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return 0
    for u in users:  # new rows first, so the foreign keys always have a target
        if u.id in renames:
            s.add(
                User(
                    id=renames[u.id],
                    created_at=u.created_at,
                    trust=u.trust,
                    trust_detail=u.trust_detail,
                    trust_updated_at=u.trust_updated_at,
                    quarantined_at=u.quarantined_at,
                    quarantine_reason=u.quarantine_reason,
                )
            )
    s.flush()
    for old, new in renames.items():
        for table in (Example, Prediction, Feedback, PrivacyCharge):
            s.execute(update(table).where(table.user_id == old).values(user_id=new))
    s.flush()
    # Summaries that name users (top contributors, per-user caps, who was left out of a
    # private run): the same ids, re-keyed, so a later forget finds them.
    for table, cols in JSON_SUMMARIES:
        for row in s.scalars(select(table)):
            for col in cols:
                new_value, changed = _rename_in(getattr(row, col), renames)
                if changed:
                    setattr(row, col, new_value)
    s.flush()
    for u in users:
        if u.id in renames:
            s.delete(u)
    s.flush()
    return len(renames)


def _rename_in(value: Any, renames: dict[str, str]) -> tuple[Any, bool]:
    """``value`` with every pseudonym in ``renames`` replaced, in strings and keys."""
    if isinstance(value, str):
        out = PSEUDONYM_ANYWHERE.sub(lambda m: renames.get(m.group(0), m.group(0)), value)
        return out, out != value
    if isinstance(value, dict):
        d, changed = {}, False
        for k, v in value.items():
            nk, ck = _rename_in(k, renames) if isinstance(k, str) else (k, False)
            nv, cv = _rename_in(v, renames)
            d[nk] = nv
            changed |= ck or cv
        return d, changed
    if isinstance(value, list):
        items = [_rename_in(v, renames) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


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
