"""Scoped API keys: only a SHA-256 of each key is stored; the key is shown once."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from flywheel.errors import AuthError, InputError
from flywheel.keys import SCOPES, SESSION_HOURS
from flywheel.store.schema import ApiKey, UiSession, utcnow

__all__ = [
    "authenticate",
    "create_key",
    "end_session",
    "has_keys",
    "list_keys",
    "open_session",
    "session_of",
]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(s: Session, scopes: list[str], name: str = "") -> tuple[str, dict[str, Any]]:
    bad = [sc for sc in scopes if sc not in SCOPES]
    if not scopes or bad:
        raise InputError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
    prefix = secrets.token_hex(4)
    key = f"fw_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        name=name or f"key-{prefix}",
        prefix=prefix,
        key_hash=_hash(key),
        scopes=",".join(sorted(set(scopes))),
    )
    s.add(row)
    s.flush()
    return key, {"id": row.id, "name": row.name, "prefix": prefix, "scopes": sorted(set(scopes))}


def list_keys(s: Session) -> list[dict[str, Any]]:
    return [
        {
            "id": k.id,
            "name": k.name,
            "prefix": k.prefix,
            "scopes": k.scopes.split(","),
            "created_at": k.created_at.isoformat(),
            "revoked": k.revoked_at is not None,
        }
        for k in s.scalars(select(ApiKey).order_by(ApiKey.id))
    ]


def has_keys(s: Session) -> bool:
    n = s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None)))
    return bool(n)


def authenticate(s: Session, key: str, scope: str | None) -> list[str]:
    """The scopes of ``key``; ``AuthError`` unless it is live and holds ``scope`` (admin
    holds all; ``scope=None`` accepts a live key of any scope)."""
    row = s.scalars(select(ApiKey).where(ApiKey.key_hash == _hash(key))).first()
    if row is None or row.revoked_at is not None:
        raise AuthError("unknown or revoked API key")
    held = set(row.scopes.split(","))
    if scope is not None and scope not in held and "admin" not in held:
        raise AuthError(
            f"this key lacks the {scope!r} scope (it has: {', '.join(sorted(held))})",
            missing_scope=scope,
        )
    return sorted(held)


def open_session(s: Session, key: str) -> tuple[str, str, list[str]]:
    """Sign in with an API key: (cookie token, CSRF token, the key's scopes)."""
    row = s.scalars(select(ApiKey).where(ApiKey.key_hash == _hash(key))).first()
    if row is None or row.revoked_at is not None:
        raise AuthError("unknown or revoked API key")
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
    if key is None or key.revoked_at is not None:
        return None
    return {"key": key.name, "scopes": key.scopes.split(","), "csrf": sess.csrf}


def end_session(s: Session, token: str) -> None:
    s.execute(delete(UiSession).where(UiSession.token_hash == _hash(token)))
