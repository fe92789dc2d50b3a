"""Store: the SQL schema (SQLite by default, PostgreSQL by URL), the storage that models,
checkpoints and blobs live in (the project folder, a shared one, or an fsspec URL), the
blobs and the prediction log's journal."""

from flywheel.store.blobs import BlobStore, sha256
from flywheel.store.db import Database, lock_training_rows, make_engine, retry_locked
from flywheel.store.queries import ensure_user
from flywheel.store.storage import ObjectCache, Storage, open_storage

__all__ = [
    "BlobStore",
    "Database",
    "ObjectCache",
    "Storage",
    "ensure_user",
    "lock_training_rows",
    "make_engine",
    "open_storage",
    "retry_locked",
    "sha256",
]
