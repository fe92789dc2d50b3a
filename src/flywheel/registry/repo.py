"""Model versions, aliases and their history in the caller's transaction: register,
promote, roll back, withdraw (functions that take a ``Session`` and never open one)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.errors import NotFoundError, RegistryError
from flywheel.registry.versions import CANDIDATE, PRODUCTION, VersionInfo
from flywheel.store.schema import AliasEvent, ModelAlias, ModelVersion, utcnow

__all__ = [
    "aliases_of",
    "check_servable",
    "clear_alias",
    "fallback",
    "get_alias",
    "get_version",
    "last_move",
    "list_versions",
    "promote",
    "record_graph",
    "rollback",
    "rollback_target",
    "set_alias",
    "withdraw",
]


def add_version(
    s: Session,
    spec: dict[str, Any],
    *,
    parent: int | None,
    dataset_version: int,
    config: dict[str, Any],
    metrics: dict[str, Any],
    gate: dict[str, Any] | None,
) -> ModelVersion:
    """A new version's row, its number assigned (flushed); its files are the caller's."""
    mv = ModelVersion(
        arch=str(spec["arch"]),
        parent_version=parent,
        dataset_version_id=dataset_version,
        training_config=config,
        spec=spec,
        metrics=metrics,
        gate=gate,
        artifact_dir="",
        weights_sha256="",
    )
    s.add(mv)
    s.flush()
    return mv


def aliases_of(s: Session) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for a in s.scalars(select(ModelAlias).order_by(ModelAlias.name)):
        out.setdefault(a.version, []).append(a.name)
    return out


def _info(mv: ModelVersion, aliases: dict[int, list[str]]) -> VersionInfo:
    return VersionInfo(
        version=mv.version,
        arch=mv.arch,
        aliases=aliases.get(mv.version, []),
        metrics=mv.metrics,
        created_at=mv.created_at,
        parent=mv.parent_version,
        dataset_version=mv.dataset_version_id,
        training_config=mv.training_config,
        gate=mv.gate,
        artifact_dir=mv.artifact_dir,
        withdrawn=mv.withdrawn_reason if mv.withdrawn_at is not None else None,
        weights_sha256=mv.weights_sha256,
        spec_sha256=mv.spec_sha256,
        graph_sha256=mv.graph_sha256,
    )


def list_versions(s: Session) -> list[VersionInfo]:
    aliases = aliases_of(s)
    return [
        _info(mv, aliases) for mv in s.scalars(select(ModelVersion).order_by(ModelVersion.version))
    ]


def get_version(s: Session, version: int) -> VersionInfo:
    mv = s.get(ModelVersion, version)
    if mv is None:
        raise NotFoundError("model version", version)
    return _info(mv, aliases_of(s))


def get_alias(s: Session, name: str) -> int | None:
    a = s.get(ModelAlias, name)
    return None if a is None else a.version


def set_alias(s: Session, name: str, version: int, *, action: str, reason: str) -> int | None:
    """Point ``name`` at ``version`` and record the move; returns the previous version."""
    mv = s.get(ModelVersion, version)
    if mv is None:
        raise NotFoundError("model version", version)
    if mv.withdrawn_at is not None:
        raise RegistryError(f"v{version} is out of service: {mv.withdrawn_reason}")
    a = s.get(ModelAlias, name, with_for_update=True)
    previous = None if a is None else a.version
    if previous == version:
        return previous  # already there: no move, no event
    if a is None:
        s.add(ModelAlias(name=name, version=version, updated_at=utcnow()))
    else:
        a.version = version
        a.updated_at = utcnow()
    s.add(
        AliasEvent(
            name=name, version=version, previous_version=previous, action=action, reason=reason
        )
    )
    s.flush()
    return previous


def clear_alias(s: Session, name: str, *, reason: str) -> int | None:
    """Remove ``name`` (nothing left to point it at); returns the version it held."""
    a = s.get(ModelAlias, name, with_for_update=True)
    if a is None:
        return None
    previous = a.version
    s.delete(a)
    s.add(
        AliasEvent(
            name=name, version=None, previous_version=previous, action="clear", reason=reason
        )
    )
    s.flush()
    return previous


def promote(s: Session, version: int, reason: str) -> int | None:
    return set_alias(s, PRODUCTION, version, action="promote", reason=reason)


def rollback(s: Session, reason: str = "rollback") -> tuple[int, int]:
    """Point production back at the version it held before its current one.

    The target is the version the most recent promotion of the current one
    replaced, so repeated rollbacks keep going back through the history.
    Returns (from, to).
    """
    current, target = rollback_target(s)
    set_alias(s, PRODUCTION, target, action="rollback", reason=reason)
    return current, target


def check_servable(s: Session, version: int) -> None:
    """Refuse a version that is unknown or out of service before any work on it."""
    mv = s.get(ModelVersion, version)
    if mv is None:
        raise NotFoundError("model version", version)
    if mv.withdrawn_at is not None:
        raise RegistryError(f"v{version} is out of service: {mv.withdrawn_reason}")


def last_move(s: Session, version: int) -> AliasEvent | None:
    """The newest move of production to ``version``."""
    q = select(AliasEvent).where(AliasEvent.name == PRODUCTION, AliasEvent.version == version)
    return s.scalars(q.order_by(AliasEvent.id.desc()).limit(1)).first()


def rollback_target(s: Session) -> tuple[int, int]:
    """(production now, the version a rollback goes back to); ``RegistryError`` when
    there is none."""
    current = get_alias(s, PRODUCTION)
    if current is None:
        raise RegistryError("there is no production model to roll back")
    target: int | None = current
    seen = {current}
    while True:  # back through the promotions, past versions taken out of service
        last_promotion = s.scalars(
            select(AliasEvent)
            .where(
                AliasEvent.name == PRODUCTION,
                AliasEvent.action == "promote",
                AliasEvent.version == target,
            )
            .order_by(AliasEvent.id.desc())
            .limit(1)
        ).first()
        target = None if last_promotion is None else last_promotion.previous_version
        if target is None or target in seen:
            raise RegistryError(f"production v{current} has no earlier version to roll back to")
        seen.add(target)
        mv = s.get(ModelVersion, target)
        if mv is not None and mv.withdrawn_at is None:
            break
    return current, target


def fallback(s: Session, affected: set[int]) -> int | None:
    """The newest version production held that is not ``affected`` (and has weights)."""
    events = s.scalars(
        select(AliasEvent).where(AliasEvent.name == PRODUCTION).order_by(AliasEvent.id.desc())
    )
    for ev in events:
        for v in (ev.version, ev.previous_version):
            if v is None or v in affected:
                continue
            mv = s.get(ModelVersion, v)
            if mv is not None and mv.withdrawn_at is None:
                return v
    return None


def withdraw(s: Session, versions: list[int], *, reason: str, at: datetime) -> dict[str, Any]:
    """Take ``versions`` out of service: marked withdrawn, and no alias left on one.

    Production falls back to the newest unaffected version it held (or is cleared);
    the candidate alias moves to production's version (or is cleared). Returns the
    aliases that moved: ``{alias: {"from": v, "to": v or None}}``.
    """
    for v in versions:
        mv = s.get(ModelVersion, v)
        if mv is None:
            raise NotFoundError("model version", v)
        mv.withdrawn_at, mv.withdrawn_reason = at, reason
    affected = set(versions)
    back = fallback(s, affected)
    moved: dict[str, Any] = {}
    for alias in (PRODUCTION, CANDIDATE):
        held = get_alias(s, alias)
        if held not in affected:
            continue
        target = back if alias == PRODUCTION else None
        target = target or get_alias(s, PRODUCTION)
        if target is not None and target not in affected:
            set_alias(s, alias, target, action="withdraw", reason=reason)
        else:
            target = None
            clear_alias(s, alias, reason=reason)
        moved[alias] = {"from": held, "to": target}
    return moved


def record_graph(s: Session, version: int, sha256: str) -> None:
    """Keep the SHA-256 of a version's serving graph, exported on first use."""
    mv = s.get(ModelVersion, version)
    if mv is None:
        raise NotFoundError("model version", version)
    mv.graph_sha256 = sha256
