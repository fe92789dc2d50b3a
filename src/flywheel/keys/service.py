"""The keys' service: API keys (shown once, stored as hashes) and the dashboard's
sign-in sessions. One transaction per method."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flywheel.context import Context
from flywheel.keys import repo

__all__ = ["KeyService"]


class KeyService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(
        self, scopes: list[str], name: str = "", expires_in: timedelta | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Make an API key; the key itself is returned once and only its hash is stored."""
        with self.ctx.db.session() as s:
            return repo.create_key(s, scopes, name, expires_in)

    def revoke(self, ident: str) -> dict[str, Any]:
        """Revoke a key (by id, prefix or name) and end its dashboard sessions."""
        with self.ctx.db.session() as s:
            return repo.revoke_key(s, ident)

    def list_keys(self) -> list[dict[str, Any]]:
        with self.ctx.db.session() as s:
            return repo.list_keys(s)

    def has_keys(self) -> bool:
        """Whether any key is live."""
        with self.ctx.db.session() as s:
            return repo.has_keys(s)

    def authenticate(self, key: str, scope: str | None) -> tuple[str, list[str]]:
        """The name and scopes of ``key``; ``AuthError`` unless it is live and holds
        ``scope`` (None: any)."""
        with self.ctx.db.session() as s:
            return repo.authenticate(s, key, scope)

    def open_session(self, key: str) -> tuple[str, str, list[str]]:
        """Sign in with an API key: (cookie token, CSRF token, the key's scopes)."""
        with self.ctx.db.session() as s:
            return repo.open_session(s, key)

    def session(self, token: str) -> dict[str, Any] | None:
        """The live session of a cookie token (None: unknown, expired or key revoked)."""
        with self.ctx.db.session() as s:
            return repo.session_of(s, token)

    def end_session(self, token: str) -> None:
        with self.ctx.db.session() as s:
            repo.end_session(s, token)
