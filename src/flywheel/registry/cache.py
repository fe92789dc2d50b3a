"""The one model cache: the production version held in memory, swapped as a whole.

Everything that answers with production goes through it: the server's backend (ONNX
Runtime or torch), the in-process ``Project.predict``, the review queue's golden
probes and explanations. A version is loaded (its files verified against the hashes
recorded at registration), given its backend, and made to answer a self-check
*before* it is swapped in (one reference assignment), so no caller sees a half-loaded
or broken model; a caller that already holds the old one finishes on it. A promotion
or rollback (``move``) commits the alias only once the version passed all that, so a
version that cannot serve never becomes production.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from flywheel.context import Context
from flywheel.data import HOLDOUT
from flywheel.data import repo as data_repo
from flywheel.errors import FlywheelError, ModelError
from flywheel.registry import repo
from flywheel.registry.artifacts import ArtifactFolder
from flywheel.registry.backends import Backend, OnnxBackend, load_backend
from flywheel.registry.loaded import LoadedModel, load_model
from flywheel.registry.versions import PRODUCTION, VersionInfo

__all__ = ["ModelCache", "Served"]

log = logging.getLogger("flywheel.serving")

T = TypeVar("T")


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
        # One refresh or move at a time, from reading the alias to the swap: two that
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
        """Serve the production version; a new one is loaded, verified and checked
        before it is swapped in (one that fails raises, and the old one stays).

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
            if served is None or served.version != info.version or served.kind != self._kind:
                served = self._prepare(info, served)
                self._swap(served)
            return served

    def move(self, version: int, commit: Callable[[], T]) -> T:
        """Make ``version`` production: load it, verify it and check it answers, then
        ``commit`` (the transaction that moves the alias), then swap it in. A version
        that fails leaves production, and what serves, as they were."""
        with self._lock:
            with self.ctx.db.session() as s:
                info = repo.get_version(s, version)
            served = self._served
            if served is None or served.version != version or served.kind != self._kind:
                served = self._prepare(info, served)
            out = commit()
            self._swap(served)
            return out

    @property
    def held(self) -> Served | None:
        """What serves now, without loading anything (None: nothing loaded yet)."""
        return self._served

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
        """Version ``version`` loaded from its artifact, verified (not cached)."""
        with self.ctx.db.session() as s:
            info = repo.get_version(s, version)
        return self._load(info)

    def _folder(self, info: VersionInfo) -> ArtifactFolder:
        return ArtifactFolder.of(self.ctx.storage, info.artifact_dir, self.ctx.object_cache)

    def _load(self, info: VersionInfo) -> LoadedModel:
        return load_model(info.version, self._folder(info), self.ctx.codec, info.hashes)

    def _prepare(self, info: VersionInfo, held: Served | None) -> Served:
        """``info``'s version ready to serve: loaded (or the held one reused), its
        backend built, its self-check passed."""
        loaded = held.loaded if held is not None and held.version == info.version else None
        loaded = loaded or self._load(info)
        backend = load_backend(
            loaded, self._kind, artifact_dir=self._folder(info), threads=self._threads,
            graph_sha256=info.graph_sha256,
        )  # fmt: skip
        if isinstance(backend, OnnxBackend) and backend.graph_sha256 != info.graph_sha256:
            with self.ctx.db.session() as s:  # the serving graph, exported: its hash kept
                repo.record_graph(s, info.version, backend.graph_sha256)
        self._self_check(loaded, backend, info)
        return Served(loaded, backend, self._kind)

    def _self_check(self, loaded: LoadedModel, backend: Backend, info: VersionInfo) -> None:
        """The version answers one of its held-out inputs (zeros where none is left) with
        an output of the right shape, all finite."""
        with self.ctx.db.session() as s:
            digest = data_repo.first_input(s, info.dataset_version, HOLDOUT)
        try:
            content = None if digest is None else self.ctx.blobs.get(digest)
            x = (
                np.zeros((1, *loaded.spec.input_shape), np.float32)
                if content is None
                else backend.decode(content)[None]
            )
            out = np.asarray(backend.run(x))
        except FlywheelError as exc:
            raise ModelError(f"v{info.version} failed its self-check: {exc}") from exc
        want = (1, len(loaded.labels)) if loaded.labels else (1,)
        if out.shape != want or not np.isfinite(out).all():
            raise ModelError(
                f"v{info.version} failed its self-check: answered an output of shape "
                f"{out.shape} (expected {want}){'' if np.isfinite(out).all() else ', not finite'}"
            )

    def _swap(self, served: Served) -> None:
        """In the lock: one reference assignment, then the server hears of it."""
        if served is not self._served:
            self._served = served
            if self._on_swap is not None:
                self._on_swap(served)
