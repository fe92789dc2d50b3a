"""Pseudonyms in the store, in the caller's transaction: a user found by raw id or by
pseudonym, every table and JSON summary that names a user re-keyed, and the
fingerprint of the key chain the store's ids were hashed with (so that a key file that
does not belong to the store is refused rather than silently splitting every user in
two). The chain itself is ``flywheel.privacy.keychain``'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flywheel.errors import NotFoundError
from flywheel.privacy.keychain import PSEUDONYM, PSEUDONYM_ANYWHERE, check_user_id
from flywheel.store.schema import (
    JSON_SUMMARIES,
    Example,
    Feedback,
    Prediction,
    PrivacyCharge,
    StoreMeta,
    User,
)

__all__ = ["FINGERPRINT_KEY", "find_user", "rekey_users", "stored_fingerprint"]

#: the ``store_meta`` row holding the chain's fingerprint
FINGERPRINT_KEY = "user_key_fingerprint"


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
