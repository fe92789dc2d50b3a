"""What every stage service shares: the settings, the task and its codec, the database,
the storage that models and checkpoints live in, the blobs, and the hook of a server that
logs predictions in the background.

One small object below the services, handed to each of them, so that none has to
reach up to the façade for these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flywheel.data import Codec, create_codec
from flywheel.settings import Settings, keep_private
from flywheel.store import BlobStore, Database, ObjectCache, Storage
from flywheel.store.storage import blob_storage, project_storage
from flywheel.tasks import Task, get_task

__all__ = ["CACHE", "Context", "PendingLog"]

#: the folder of a project that keeps this machine's copies of remote model files
CACHE = "storage-cache"


class PendingLog(Protocol):
    """Predictions logged in the background: readers wait for what was queued."""

    def wait_written(self, prediction_id: str, timeout: float = 30.0) -> bool:
        """Wait until this prediction's row is committed (True at once if not pending)."""
        ...

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every prediction queued so far is committed."""
        ...


@dataclass
class Context:
    settings: Settings
    task: Task
    codec: Codec
    db: Database
    blobs: BlobStore
    #: models (``models/vN/``) and checkpoints (``checkpoints/``): the project folder, or
    #: ``storage_url``
    storage: Storage
    #: set by a server that logs predictions in the background (None: every write is
    #: committed before it returns)
    pending: PendingLog | None = None

    @classmethod
    def open(cls, settings: Settings) -> Context:
        """Open a project's store (migrated to the newest schema), its storage (reached
        once here, so that an unreachable ``storage_url`` fails before any work) and its
        blobs."""
        task = get_task(settings.task)
        codec = create_codec(task.modality)
        keep_private(settings.project_dir)
        storage = project_storage(settings)
        if settings.storage_url is None:
            keep_private(settings.blobs)  # it may live elsewhere (blob_dir)
        else:
            storage.check()
        db = Database(settings.db_url)
        db.migrate()
        if db.path is not None:  # SQLite: its WAL and shared-memory files take its mode
            keep_private(db.path)
        blobs = BlobStore(blob_storage(settings, storage))
        return cls(settings, task, codec, db, blobs, storage)

    @property
    def object_cache(self) -> ObjectCache | None:
        """Where remote model files are kept on this machine, by SHA-256 (None: the
        storage is a folder here, read directly)."""
        if self.storage.local_path("") is not None:
            return None
        return ObjectCache(self.settings.project_dir / CACHE)

    def settle(self) -> None:
        """Readers of predictions see every one answered so far (the server's log queue)."""
        if self.pending is not None:
            self.pending.flush()

    def wait_written(self, prediction_id: str) -> None:
        """A prediction still in the server's log queue: wait for its commit."""
        if self.pending is not None:
            self.pending.wait_written(prediction_id)
