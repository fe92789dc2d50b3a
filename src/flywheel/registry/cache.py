"""The one model cache: the production version held in memory, swapped as a whole.

Everything that answers with production goes through it: the server's backend (ONNX
Runtime or torch), the in-process ``Project.predict``, the review queue's golden
probes and explanations. ``refresh`` reads the production alias and, when it moved,
loads the new version *before* swapping it in (one reference assignment), so no
caller sees a half-loaded model; a caller that already holds the old one finishes
on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flywheel.context import Context
from flywheel.errors import ModelError
from flywheel.registry import repo
from flywheel.registry.backends import Backend, load_backend
from flywheel.registry.loaded import LoadedModel, load_model
from flywheel.registry.versions import PRODUCTION

__all__ = ["ModelCache", "Served"]

log = logging.getLogger("flywheel.serving")


@dataclass(frozen=True)
class Served:
    """The production version in memory: torch's model, and the backend that serves it."""

    loaded: LoadedModel
    backend: Backend
    #: the backend kind asked for when it was built (an ONNX one may fall back to torch)
    kind: str

    @property
    def version(self) -> int:
        return self.loaded.version


class ModelCache:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._served: Served | None = None
        # One refresh at a time, from reading the alias to the swap: two refreshes that
        # interleaved could otherwise swap an older version back in.
        self._lock = threading.Lock()
        # In-process callers get torch; a server asks for its configured backend.
        self._kind = "torch"
        self._threads = 1
        self._on_swap: Callable[[Served], None] | None = None

    def serve_with(
        self, kind: str, *, threads: int = 1, on_swap: Callable[[Served], None] | None = None
    ) -> None:
        """Build each production version's backend as ``kind`` from the next refresh on
        (the server's ``serving_backend``), and call ``on_swap`` after every swap."""
        with self._lock:
            self._kind, self._threads, self._on_swap = kind, threads, on_swap

    def stop_serving(self) -> None:
        """Back to in-process use (torch, nobody to tell of swaps): the server stopped."""
        self.serve_with("torch")

    def refresh(self) -> Served | None:
        """Serve the production version; a new one is loaded before it is swapped in.

        None when there is no production version (none yet, or it was withdrawn).
        """
        with self._lock:
            with self.ctx.db.session() as s:
                current = repo.get_alias(s, PRODUCTION)
                info = None if current is None else repo.get_version(s, current)
            if info is None:
                self._served = None
                return None
            served = self._served
            if served is not None and served.version == info.version:
                if served.kind == self._kind:
                    return served
                loaded = served.loaded
            else:
                loaded = load_model(info.version, info.artifact_dir, self.ctx.codec)
            backend = load_backend(
                loaded, self._kind, artifact_dir=Path(info.artifact_dir), threads=self._threads
            )
            fresh = Served(loaded, backend, self._kind)
            self._served = fresh  # one reference assignment: the swap
            if self._on_swap is not None:
                self._on_swap(fresh)
            return fresh

    def refresh_if_held(self) -> None:
        """Refresh when a version is held (a retrain promoted one: serve it now)."""
        if self._served is not None:
            self.refresh()

    def current(self) -> Served:
        """What serves now (loaded on first use); ``ModelError`` when nothing can."""
        served = self._served or self.refresh()
        if served is None:
            raise ModelError("no production model yet; train one with `flywheel train`")
        return served

    def get(self, version: int) -> LoadedModel:
        """Version ``version`` in memory: the served one, or loaded for the caller."""
        served = self._served
        if served is not None and served.version == version:
            return served.loaded
        try:
            return self.load(version)
        except (FileNotFoundError, OSError) as exc:
            raise ModelError(f"model v{version} is not available: {exc}") from exc

    def load(self, version: int) -> LoadedModel:
        """Version ``version`` loaded from its artifact (not cached)."""
        with self.ctx.db.session() as s:
            info = repo.get_version(s, version)
        return load_model(version, info.artifact_dir, self.ctx.codec)
