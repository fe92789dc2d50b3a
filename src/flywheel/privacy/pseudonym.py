"""End-user ids stored only as keyed hashes, with a key that can be rotated.

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
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flywheel.errors import ConfigError
from flywheel.store.schema import (
    Example,
    Feedback,
    Prediction,
    PrivacyCharge,
    StoreMeta,
    User,
)

__all__ = ["PSEUDONYM", "Pseudonymizer", "fingerprint", "rekey_users", "seed_user_key"]

PSEUDONYM = re.compile(r"^u_[0-9a-f]{32}$")
PSEUDONYM_ANYWHERE = re.compile(r"u_[0-9a-f]{32}")
_META_KEY = "user_key_fingerprint"


def _step(key: bytes, value: str) -> str:
    return "u_" + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def fingerprint(keys: list[bytes]) -> str:
    """Identifies a key chain without revealing it."""
    h = hashlib.sha256(b"flywheel-user-keys")
    for k in keys:
        h.update(hashlib.sha256(k).digest())
    return h.hexdigest()


def _read(path: Path) -> list[bytes]:
    try:
        doc = json.loads(path.read_text())
        keys = [bytes.fromhex(k) for k in doc["keys"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the user-id key file {str(path)!r}: {exc}") from exc
    if not keys or any(len(k) < 16 for k in keys):
        raise ConfigError(f"the user-id key file {str(path)!r} holds no usable key")
    return keys


def _write(path: Path, keys: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": [k.hex() for k in keys]}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time creates or rotates the chain (server workers start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stored_fingerprint(s: Session) -> str | None:
    row = s.get(StoreMeta, _META_KEY)
    return None if row is None else row.value


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
    from flywheel.privacy.forget import JSON_SUMMARIES

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
            out = _step(k, out)
        return out

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.keys)

    @classmethod
    def open(
        cls, path: Path, session: Callable[[], AbstractContextManager[Session]]
    ) -> Pseudonymizer:
        """The chain in ``path``, checked against the store (created if neither has one).

        A store whose users predate keyed hashing (raw ids) is re-keyed here, once.
        """
        nxt = path.with_name(path.name + ".next")
        with _locked(path), session() as s:
            stored = _stored_fingerprint(s)
            if nxt.exists():  # an interrupted rotation: the database says which chain won
                if stored is not None and fingerprint(_read(nxt)) == stored:
                    os.replace(nxt, path)
                else:
                    nxt.unlink()
            if path.exists():
                keys = _read(path)
                if stored is None:
                    # Users stored before keyed hashing: hash their raw ids now.
                    p = cls(path, keys)
                    rekey_users(s, lambda old: old if PSEUDONYM.match(old) else p(old))
                    s.add(StoreMeta(key=_META_KEY, value=p.fingerprint))
                    s.commit()
                    return p
                if fingerprint(keys) != stored:
                    raise ConfigError(
                        f"the user-id key file {str(path)!r} does not belong to this store "
                        "(its fingerprint differs from the one the database recorded); "
                        "restore the project's own key file"
                    )
                return cls(path, keys)
            if stored is not None:
                raise ConfigError(
                    f"the user-id key file {str(path)!r} is missing, and the store's user ids "
                    "were hashed with it; restore it from a backup (without it, returning "
                    "users cannot be recognised)"
                )
            keys = [secrets.token_bytes(32)]
            p = cls(path, keys)
            _write(nxt, keys)
            rekey_users(s, lambda old: old if PSEUDONYM.match(old) else p(old))
            s.add(StoreMeta(key=_META_KEY, value=p.fingerprint))
            s.commit()
            os.replace(nxt, path)
            return p

    def rotate(
        self, session: Callable[[], AbstractContextManager[Session]]
    ) -> tuple[Pseudonymizer, int]:
        """Append a fresh key and re-key every stored user; (the new chain, users)."""
        new_key = secrets.token_bytes(32)
        keys = [*self.keys, new_key]
        nxt = self.path.with_name(self.path.name + ".next")
        with _locked(self.path):
            return self._rotate(session, keys, new_key, nxt)

    def _rotate(
        self,
        session: Callable[[], AbstractContextManager[Session]],
        keys: list[bytes],
        new_key: bytes,
        nxt: Path,
    ) -> tuple[Pseudonymizer, int]:
        _write(nxt, keys)
        try:
            with session() as s:
                meta = s.get(StoreMeta, _META_KEY)
                if meta is None or meta.value != self.fingerprint:
                    raise ConfigError("the store's user-id key changed under this process")
                n = rekey_users(s, lambda old: _step(new_key, old))
                meta.value = fingerprint(keys)
                s.commit()
        except BaseException:
            nxt.unlink(missing_ok=True)
            raise
        os.replace(nxt, self.path)
        return Pseudonymizer(self.path, keys), n


def seed_user_key(project: Any, key: bytes) -> None:
    """Give a new project (no key yet, no users) a chosen key: reproducible demos and
    benchmarks. A real project's key is random."""
    path = project.settings.user_keys
    if path.exists():
        raise ConfigError(f"{str(path)!r} exists: this project has its key already")
    if len(key) < 16:
        raise ConfigError("a user-id key needs at least 16 bytes")
    _write(path, [key])
