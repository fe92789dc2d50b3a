"""Small queries shared by several verbs."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flywheel.store.schema import User, utcnow

__all__ = ["ensure_user"]


def ensure_user(s: Session, user_id: str) -> None:
    """Insert the user if new; safe when two requests bring the same new id at once."""
    dialect = s.get_bind().dialect.name
    values = {"id": user_id, "created_at": utcnow()}
    if dialect == "postgresql":
        s.execute(postgresql.insert(User).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        s.execute(sqlite.insert(User).values(**values).on_conflict_do_nothing())
    elif s.get(User, user_id) is None:
        s.add(User(**values))
        s.flush()
