"""Store: the SQL schema (SQLite by default, PostgreSQL by URL), the blob folder and the
prediction log's journal."""

from flywheel.store.blobs import BlobStore, sha256
from flywheel.store.db import Database, make_engine, retry_locked
from flywheel.store.queries import ensure_user

__all__ = ["BlobStore", "Database", "ensure_user", "make_engine", "retry_locked", "sha256"]
