"""GET, POST /v1/keys and DELETE /v1/keys/{key}: API keys, for admins."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path

from flywheel.serving.deps import ProjectDep
from flywheel.serving.schemas import (
    BODY,
    ID_PATTERN,
    KEYED,
    KeyCreated,
    KeyPublic,
    KeyRequest,
    error,
)

__all__ = ["router"]

router = APIRouter(tags=["keys"], responses=KEYED)

KeyPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="The key's id or prefix (as listed), or its name.",
    ),
]


@router.get("/v1/keys", response_model=list[KeyPublic])
def list_keys(project: ProjectDep) -> list[KeyPublic]:
    """Every key: name, prefix, scopes, expiry and status — never the key itself."""
    return [KeyPublic.model_validate(k) for k in project.list_keys()]


@router.post(
    "/v1/keys",
    status_code=201,
    response_model=KeyCreated,
    responses={**BODY, 422: error("Unknown scopes, a bad name, or an expiry out of range.")},
)
def create_key(project: ProjectDep, body: KeyRequest) -> KeyCreated:
    """A new key, shown in this answer only (only its hash is stored)."""
    expires = None if body.expires_days is None else timedelta(days=body.expires_days)
    key, info = project.create_key(list(body.scopes), body.name, expires_in=expires)
    return KeyCreated.model_validate({"key": key, **info})


@router.delete(
    "/v1/keys/{key}",
    response_model=KeyPublic,
    responses={
        404: error("No such key."),
        422: error("A name several keys share: use the id or prefix."),
    },
)
def revoke_key(project: ProjectDep, key: KeyPath) -> KeyPublic:
    """Revoke a key: refused from the next request on, its dashboard sessions ended.
    Revoking a revoked key changes nothing (and answers the same)."""
    return KeyPublic.model_validate(project.revoke_key(key))
