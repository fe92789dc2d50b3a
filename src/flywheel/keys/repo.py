"""Scoped API keys: only a SHA-256 of each key is stored; the key is shown once."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from flywheel.errors import AuthError, InputError, NotFoundError
from flywheel.keys import SCOPES, SESSION_HOURS
from flywheel.store.schema import ApiKey, UiSession, utcnow

__all__ = [
    "authenticate",
    "create_key",
    "end_session",
    "has_keys",
    "list_keys",
    "open_session",
    "revoke_key",
    "session_of",
]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _live(key: ApiKey) -> str | None:
    """Why a key may not be used (None: it may)."""
    if key.revoked_at is not None:
        return "this API key was revoked"
    if key.expires_at is not None and key.expires_at <= utcnow():
        return f"this API key expired at {key.expires_at.isoformat(timespec='seconds')}"
    return None


def _public(k: ApiKey) -> dict[str, Any]:
    status = "revoked" if k.revoked_at else "expired" if _live(k) else "live"
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "scopes": k.scopes.split(","),
        "created_at": k.created_at.isoformat(),
        "expires_at": k.expires_at.isoformat() if k.expires_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        "status": status,
        "revoked": k.revoked_at is not None,
    }


def create_key(
    s: Session, scopes: list[str], name: str = "", expires_in: timedelta | None = None
) -> tuple[str, dict[str, Any]]:
    bad = [sc for sc in scopes if sc not in SCOPES]
    if not scopes or bad:
        raise InputError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InputError(f"a key must expire in the future; got {expires_in}")
    if len(name) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InputError("a key's name is at most 128 characters, without control characters")
    prefix = secrets.token_hex(4)
    key = f"fw_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        name=name or f"key-{prefix}",
        prefix=prefix,
        key_hash=_hash(key),
        scopes=",".join(sorted(set(scopes))),
        expires_at=None if expires_in is None else utcnow() + expires_in,
    )
    s.add(row)
    s.flush()
    return key, _public(row)


def list_keys(s: Session) -> list[dict[str, Any]]:
    return [_public(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.id))]


def has_keys(s: Session) -> bool:
    """Whether any key is live (neither revoked nor expired)."""
    now = utcnow()
    n = s.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.revoked_at.is_(None))
        .where(or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
    )
    return bool(n)


def revoke_key(s: Session, ident: str) -> dict[str, Any]:
    """Revoke a key named by its id, prefix or name, and end its dashboard sessions.
    Revoking a revoked key changes nothing."""
    rows = list(
        s.scalars(
            select(ApiKey).where(
                or_(
                    ApiKey.prefix == ident,
                    ApiKey.name == ident,
                    ApiKey.id == (int(ident) if ident.isdigit() and len(ident) < 10 else -1),
                )
            )
        )
    )
    if not rows:
        raise NotFoundError("API key", ident)
    if len(rows) > 1:
        raise InputError(
            f"{ident!r} names {len(rows)} keys (ids {', '.join(str(r.id) for r in rows)}); "
            "revoke one by its id or prefix"
        )
    (row,) = rows
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        s.execute(delete(UiSession).where(UiSession.key_id == row.id))
    return _public(row)


def authenticate(s: Session, key: str, scope: str | None) -> tuple[str, list[str]]:
    """The name and scopes of ``key``; ``AuthError`` unless it is live and holds ``scope``
    (admin holds all; ``scope=None`` accepts a live key of any scope)."""
    row = s.scalars(select(ApiKey).where(ApiKey.key_hash == _hash(key))).first()
    if row is None:
        raise AuthError("unknown API key")
    if (why := _live(row)) is not None:
        raise AuthError(why)
    held = set(row.scopes.split(","))
    if scope is not None and scope not in held and "admin" not in held:
        raise AuthError(
            f"this key lacks the {scope!r} scope (it has: {', '.join(sorted(held))})",
            missing_scope=scope,
        )
    return row.name, sorted(held)


def open_session(s: Session, key: str) -> tuple[str, str, list[str]]:
    """Sign in with an API key: (cookie token, CSRF token, the key's scopes)."""
    row = s.scalars(select(ApiKey).where(ApiKey.key_hash == _hash(key))).first()
    if row is None:
        raise AuthError("unknown API key")
    if (why := _live(row)) is not None:
        raise AuthError(why)
    s.execute(delete(UiSession).where(UiSession.expires_at < utcnow()))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    s.add(
        UiSession(
            token_hash=_hash(token),
            key_id=row.id,
            csrf=csrf,
            expires_at=utcnow() + timedelta(hours=SESSION_HOURS),
        )
    )
    return token, csrf, row.scopes.split(",")


def session_of(s: Session, token: str) -> dict[str, Any] | None:
    """The live session of a cookie token: its key's name and scopes, and its CSRF token;
    None when unknown, expired, or its key was revoked since."""
    sess = s.get(UiSession, _hash(token))
    if sess is None or sess.expires_at < utcnow():
        return None
    key = s.get(ApiKey, sess.key_id)
    if key is None or _live(key) is not None:
        return None
    return {"key": key.name, "scopes": key.scopes.split(","), "csrf": sess.csrf}


def end_session(s: Session, token: str) -> None:
    s.execute(delete(UiSession).where(UiSession.token_hash == _hash(token)))
