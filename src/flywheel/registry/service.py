"""The registry's service: model versions and aliases (each public method commits what
it writes in one transaction), and the one model cache that every promotion and
rollback swaps at once."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from torch import nn

from flywheel.context import Context
from flywheel.errors import FlywheelError, NotFoundError, RegistryError
from flywheel.events import repo as events
from flywheel.models import ModelSpec
from flywheel.outputs import finite_json
from flywheel.privacy import ledger
from flywheel.registry import repo
from flywheel.registry.artifacts import ArtifactFolder, save_artifact
from flywheel.registry.cache import ModelCache
from flywheel.registry.imported import save_imported
from flywheel.registry.loaded import LoadedModel
from flywheel.registry.versions import CANDIDATE, PRODUCTION, VersionInfo
from flywheel.store import lock_training_rows
from flywheel.store.schema import DatasetVersion, ModelVersion, utcnow

__all__ = ["Champion", "Charge", "Registered", "RegistryService"]


@dataclass(frozen=True)
class Champion:
    """The production version a challenger is gated against."""

    version: int
    training_config: dict[str, Any]

    @property
    def private(self) -> bool:
        """Trained with DP-SGD (an ε target or an explicit noise multiplier)."""
        config = self.training_config
        return bool(config.get("dp_epsilon")) or config.get("dp_noise_multiplier") is not None


@dataclass(frozen=True)
class Charge:
    """What a private run spends: its ε and δ, for every user with rows in it."""

    users: Sequence[str | None]
    epsilon: float
    delta: float


@dataclass(frozen=True)
class Registered:
    """A trained version on record: served from now on, or (``withdrawn``) recorded only,
    because a forget erased rows it trained on while it trained."""

    info: VersionInfo
    withdrawn: bool = False


class RegistryService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cache = ModelCache(ctx)

    def models(self) -> list[VersionInfo]:
        with self.ctx.db.session() as s:
            return [self._resolved(v) for v in repo.list_versions(s)]

    def version(self, version: int) -> VersionInfo:
        with self.ctx.db.session() as s:
            return self._resolved(repo.get_version(s, version))

    def _resolved(self, info: VersionInfo) -> VersionInfo:
        """With its artifact folder's full name: a path here, or the storage's URL."""
        return replace(info, artifact_dir=str(self._folder(info.artifact_dir)))

    def _folder(self, artifact_dir: str) -> ArtifactFolder:
        return ArtifactFolder.of(self.ctx.storage, artifact_dir, self.ctx.object_cache)

    def production(self) -> int | None:
        with self.ctx.db.session() as s:
            return repo.get_alias(s, PRODUCTION)

    def production_state(self, version: int | None = None) -> dict[str, Any]:
        """Production now (``version``), how it came to ``version`` (default: production;
        "promote: <reason>", "rollback: ..."), and where a rollback would go (None:
        nowhere, so nothing offers one)."""
        with self.ctx.db.session() as s:
            current = repo.get_alias(s, PRODUCTION)
            of = version or current
            e = None if of is None else repo.last_move(s, of)
            try:
                target: int | None = repo.rollback_target(s)[1]
            except RegistryError:
                target = None
            return {
                "version": current,
                "moved": "moved" if e is None else f"{e.action}: {e.reason}",
                "rollback_to": target,
            }

    def champion(self) -> Champion | None:
        """The production version and its training config (None: no production yet)."""
        with self.ctx.db.session() as s:
            version = repo.get_alias(s, PRODUCTION)
            row = None if version is None else s.get(ModelVersion, version)
            if version is None or row is None:
                return None
            return Champion(version, dict(row.training_config))

    def load(self, version: int) -> LoadedModel:
        """A version loaded from its artifact (not the cached production)."""
        return self.cache.load(version)

    def promote(self, version: int, reason: str) -> VersionInfo:
        """Point production at ``version`` once it has loaded (its files verified) and
        answered a self-check; the cache serves it at once. A version that fails leaves
        production where it was."""
        with self.ctx.db.session() as s:
            repo.check_servable(s, version)

        def commit() -> VersionInfo:
            with self.ctx.db.session() as s:
                repo.promote(s, version, reason)
                events.record(
                    s, self.ctx.settings.webhooks, "model.promoted",
                    {"version": version, "reason": reason},
                )  # fmt: skip
                return self._resolved(repo.get_version(s, version))

        return self.cache.move(version, commit)

    def rollback(self, reason: str) -> tuple[int, int]:
        """Production back to the version it held before (loaded and checked first, as
        for a promotion); the cache serves it at once. Returns (from, to)."""
        with self.ctx.db.session() as s:
            current, target = repo.rollback_target(s)

        def commit() -> tuple[int, int]:
            with self.ctx.db.session() as s:
                repo.set_alias(s, PRODUCTION, target, action="rollback", reason=reason)
                events.record(
                    s, self.ctx.settings.webhooks, "model.rolled_back",
                    {"from_version": current, "to_version": target, "reason": reason},
                )  # fmt: skip
            return current, target

        return self.cache.move(target, commit)

    def register(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        config: dict[str, Any],
        dataset_version: int,
        erased_at_start: dict[str, Any] | None,
        parent: int | None,
        warm_started: bool,
        metrics: dict[str, Any],
        gate: dict[str, Any],
        promote: str | None,
        reason: str,
        charge: Charge | None = None,
    ) -> Registered:
        """Record a trained version, save its weights, make it the candidate and, with
        ``promote`` (the reason), production — in one transaction.

        A forget that erased rows of ``dataset_version`` while the run trained (its
        ``erased`` mark moved since ``erased_at_start``), or withdrew the version it
        warm-started from, makes this a withdrawn record: kept for the audit trail,
        without the summaries that could name the user, never served. ``charge``
        (private runs) bills every user with rows in the run on the privacy ledger, in
        the same transaction.
        """
        metrics, gate = finite_json(metrics), finite_json(gate)  # stored values stay valid JSON
        with self.ctx.db.session() as s:
            # A forget either committed before (its erased mark is read below) or waits
            # for this commit (and then withdraws this version with the others).
            lock_training_rows(s)
            mv = repo.add_version(
                s, spec.to_json(), parent=parent, dataset_version=dataset_version,
                config=config, metrics=metrics, gate=gate,
            )  # fmt: skip
            erased_now = s.scalar(
                select(DatasetVersion.erased).where(DatasetVersion.id == dataset_version)
            )
            parent_row = None if parent is None else s.get(ModelVersion, parent)
            from_withdrawn = (
                parent_row is not None and parent_row.withdrawn_at is not None and warm_started
            )
            if erased_now != erased_at_start or from_withdrawn:
                mv.withdrawn_at = utcnow()
                mv.withdrawn_reason = "trained on rows erased (forget) while it trained"
                mv.gate = {"promote": False, "promoted": False, "reason": mv.withdrawn_reason}
                mv.metrics = {k: v for k, v in metrics.items() if k not in ("privacy",)}
                s.commit()
                return Registered(self._resolved(repo.get_version(s, mv.version)), withdrawn=True)
            folder = self._folder(_models_key(mv.version))
            try:
                hashes = save_artifact(model, spec, folder)
                mv.weights_sha256, mv.spec_sha256 = str(hashes.weights), hashes.spec
                # A key of the storage (the project folder by default): a copied project
                # loads its own models, and every machine of a storage_url the same ones.
                mv.artifact_dir = folder.key
                s.flush()
                if charge is not None:
                    metrics["privacy"]["users_charged"] = ledger.charge(
                        s, mv.version, list(charge.users), charge.epsilon, charge.delta
                    )
                    mv.metrics = dict(metrics)
                repo.set_alias(s, CANDIDATE, mv.version, action="set", reason=reason)
                if promote is not None:
                    repo.promote(s, mv.version, promote)
                hooks = self.ctx.settings.webhooks
                events.record(
                    s, hooks, "gate.decision", _decision_event(mv, dataset_version, reason)
                )
                if promote is not None:
                    events.record(
                        s, hooks, "model.promoted", {"version": mv.version, "reason": promote}
                    )
                s.commit()
            except BaseException:
                _remove(folder)
                raise
            info = self._resolved(repo.get_version(s, mv.version))
        if promote is not None:
            self.cache.refresh_if_held()
        return Registered(info)

    def register_imported(
        self,
        graph: bytes,
        spec: ModelSpec,
        *,
        dataset_version: int,
        source: dict[str, Any],
        metrics: dict[str, Any],
        reason: str,
    ) -> VersionInfo:
        """Record an imported ONNX graph as a version and make it the candidate, in one
        transaction: the file as it came (its SHA-256 kept, verified at every load) and
        its spec. No gate ran (there was nothing to compare it with on import): its
        record says so; promoting it is the caller's next step."""
        metrics = finite_json(metrics)
        gate = {"imported": True, "promote": None, "reason": f"{reason}: not gated on import"}
        with self.ctx.db.session() as s:
            mv = repo.add_version(
                s, spec.to_json(), parent=None, dataset_version=dataset_version,
                config={"imported": source}, metrics=metrics, gate=gate,
            )  # fmt: skip
            folder = self._folder(_models_key(mv.version))
            try:
                hashes = save_imported(graph, spec, folder)
                # The graph is what serves: its hash is both the "weights" and the graph's.
                mv.weights_sha256, mv.spec_sha256 = str(hashes.weights), hashes.spec
                mv.graph_sha256 = hashes.weights
                mv.artifact_dir = folder.key
                repo.set_alias(s, CANDIDATE, mv.version, action="set", reason=reason)
                s.commit()
            except BaseException:
                _remove(folder)
                raise
            return self._resolved(repo.get_version(s, mv.version))

    def add_metrics(self, version: int, metrics: dict[str, Any]) -> None:
        """Keep more measurements of a version (an export's parity record) beside it."""
        with self.ctx.db.session() as s:
            mv = s.get(ModelVersion, version)
            if mv is None:
                raise NotFoundError("model version", version)
            mv.metrics = {**mv.metrics, **metrics}

    def delete_weights(self, versions: Sequence[int]) -> None:
        """Remove the artifact folders of ``versions`` (withdrawn: never served again),
        and this machine's cached copies of their files."""
        cache = self.ctx.object_cache
        for v in versions:
            self._folder(_models_key(v)).remove()
            if cache is not None:
                with self.ctx.db.session() as s:
                    row = s.get(ModelVersion, v)
                    if row is not None:
                        cache.discard(
                            [row.weights_sha256, row.spec_sha256 or "", row.graph_sha256 or ""]
                        )


def _models_key(version: int) -> str:
    """Where a version's files go in the storage."""
    return f"models/v{version}"


def _remove(folder: ArtifactFolder) -> None:
    """A half-written version's files gone, best effort (the error that got us here is
    the one to report)."""
    with contextlib.suppress(FlywheelError):
        folder.remove()


def _decision_event(mv: ModelVersion, dataset_version: int, reason: str) -> dict[str, Any]:
    """What a webhook hears of a gate decision: the numbers and each check's outcome,
    never a user (the contribution check names its top contributor's pseudonym)."""
    gate = mv.gate or {}
    keep = ("promote", "promoted", "reason", "metric", "challenger_score", "champion_score")
    return {
        "model_version": mv.version,
        "dataset_version": dataset_version,
        "run": reason,
        **{k: gate.get(k) for k in (*keep, "champion_version", "verdict", "interval", "alpha")},
        "checks": {name: c.get("passed") for name, c in (gate.get("checks") or {}).items()},
    }
