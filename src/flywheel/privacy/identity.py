"""Identity: the key chain that turns raw user ids into stored pseudonyms, opened
against the store once per process, rotated, and reloaded after another process
rotated it. Each public method commits in one transaction (a rotation with its audit
record).

Rotating appends a key and maps every stored pseudonym ``p`` to ``HMAC(new, p)``, so
the store is re-keyed without ever knowing a raw id, and a leaked older key alone no
longer links a raw id to its rows. A rotation is crash-safe: the new chain is written
beside the old one (``.next``), the database is re-keyed in one transaction that also
records the new fingerprint, and only then does the new file replace the old; an
interrupted rotation is finished or discarded by the next open, whichever the
database says.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Any

from flywheel.context import Context
from flywheel.errors import ConfigError
from flywheel.privacy.keychain import (
    PSEUDONYM,
    Pseudonymizer,
    check_user_id,
    fingerprint,
    hash_step,
    key_file_lock,
    read_keys,
    write_keys,
)
from flywheel.privacy.pseudonym import FINGERPRINT_KEY, rekey_users, stored_fingerprint
from flywheel.store import Database
from flywheel.store.schema import AuditRecord, StoreMeta

__all__ = ["IdentityService", "open_chain", "rotate_chain"]


class IdentityService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._chain: Pseudonymizer | None = None
        self._lock = threading.Lock()

    @property
    def chain(self) -> Pseudonymizer:
        """The project's key chain (opened, or created, on first use)."""
        if self._chain is None:
            with self._lock:
                if self._chain is None:
                    self._chain = open_chain(self.ctx.settings.user_keys, self.ctx.db)
        return self._chain

    def pseudonym(self, user_id: str | None) -> str | None:
        """The stored form of a raw user id (checked; None when absent)."""
        user_id = check_user_id(user_id)
        return None if user_id is None else self.chain(user_id)

    def reload(self) -> bool:
        """Pick up a key rotation made by another process; True when the chain changed."""
        if self._chain is None:
            return False
        with self.ctx.db.session() as s:
            meta = s.get(StoreMeta, FINGERPRINT_KEY)
        if meta is None or meta.value == self._chain.fingerprint:
            return False
        with self._lock:
            self._chain = open_chain(self.ctx.settings.user_keys, self.ctx.db)
        return True

    def rotate(self) -> dict[str, Any]:
        """Append a key to the chain and re-key every stored user; audited in the same
        transaction."""
        self.ctx.settle()
        chain = self.chain
        with self._lock:
            self._chain, detail = rotate_chain(chain, self.ctx.db)
        return detail


def open_chain(path: Path, db: Database) -> Pseudonymizer:
    """The chain in ``path``, checked against the store (created if neither has one).

    A store whose users predate keyed hashing (raw ids) is re-keyed here, once.
    """
    nxt = path.with_name(path.name + ".next")
    with key_file_lock(path), db.session() as s:
        stored = stored_fingerprint(s)
        if nxt.exists():  # an interrupted rotation: the database says which chain won
            if stored is not None and fingerprint(read_keys(nxt)) == stored:
                os.replace(nxt, path)
            else:
                nxt.unlink()
        if path.exists():
            keys = read_keys(path)
            if stored is None:
                # Users stored before keyed hashing: hash their raw ids now.
                p = Pseudonymizer(path, keys)
                rekey_users(s, lambda old: old if PSEUDONYM.match(old) else p(old))
                s.add(StoreMeta(key=FINGERPRINT_KEY, value=p.fingerprint))
                s.commit()
                return p
            if fingerprint(keys) != stored:
                raise ConfigError(
                    f"the user-id key file {str(path)!r} does not belong to this store "
                    "(its fingerprint differs from the one the database recorded); "
                    "restore the project's own key file"
                )
            return Pseudonymizer(path, keys)
        if stored is not None:
            raise ConfigError(
                f"the user-id key file {str(path)!r} is missing, and the store's user ids "
                "were hashed with it; restore it from a backup (without it, returning "
                "users cannot be recognised)"
            )
        keys = [secrets.token_bytes(32)]
        p = Pseudonymizer(path, keys)
        write_keys(nxt, keys)
        rekey_users(s, lambda old: old if PSEUDONYM.match(old) else p(old))
        s.add(StoreMeta(key=FINGERPRINT_KEY, value=p.fingerprint))
        s.commit()
        os.replace(nxt, path)
        return p


def rotate_chain(chain: Pseudonymizer, db: Database) -> tuple[Pseudonymizer, dict[str, Any]]:
    """Append a fresh key and re-key every stored user, with the audit record, in one
    transaction; (the new chain, the record's detail)."""
    new_key = secrets.token_bytes(32)
    keys = [*chain.keys, new_key]
    nxt = chain.path.with_name(chain.path.name + ".next")
    with key_file_lock(chain.path):
        write_keys(nxt, keys)
        try:
            with db.session() as s:
                meta = s.get(StoreMeta, FINGERPRINT_KEY)
                if meta is None or meta.value != chain.fingerprint:
                    raise ConfigError("the store's user-id key changed under this process")
                n = rekey_users(s, lambda old: hash_step(new_key, old))
                meta.value = fingerprint(keys)
                detail = {
                    "users": n,
                    "keys": len(keys),
                    "fingerprint_before": chain.fingerprint,
                    "fingerprint_after": meta.value,
                }
                s.add(AuditRecord(action="rotate_key", subject=None, detail=detail))
                s.commit()
        except BaseException:
            nxt.unlink(missing_ok=True)
            raise
        os.replace(nxt, chain.path)
    return Pseudonymizer(chain.path, keys), detail
