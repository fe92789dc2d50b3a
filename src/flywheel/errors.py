"""Errors raised by flywheel.

Every error flywheel raises on purpose is a ``FlywheelError``; third-party errors
are wrapped at the boundary so that callers catch one tree::

    FlywheelError
    ├── ConfigError            settings or flywheel.toml are invalid or unsafe
    ├── ProjectError           no project at a path, or one already there
    ├── DataError              a data source or an input cannot be used
    │   └── InputError         one input (upload, JSON body, file) is invalid
    │       └── UnsupportedMediaError   a file of a type the task does not take
    ├── NotFoundError          a prediction, model version, job, key ... is unknown
    ├── ModelError             a model cannot be built, trained, loaded or applied
    │   ├── NotFittedError     a model was used before it was trained
    │   └── ContractError      an architecture (a plugin's) breaks the zoo's contract: the clause
    ├── ConflictError          the request conflicts with the state (HTTP 409)
    │   └── RegistryError      a registry operation is not possible (e.g. nothing to roll back to)
    ├── AuthError              a key is missing, unknown, revoked or lacks the scope
    └── StorageError           storage_url (models, checkpoints, blobs) cannot be reached or written

Messages name the thing, what was expected and what came.
"""

from __future__ import annotations

import difflib

__all__ = [
    "AuthError",
    "ConfigError",
    "ConflictError",
    "ContractError",
    "DataError",
    "FlywheelError",
    "InputError",
    "ModelError",
    "NotFittedError",
    "NotFoundError",
    "ProjectError",
    "RegistryError",
    "StorageError",
    "UnsupportedMediaError",
    "did_you_mean",
]


def did_you_mean(name: str, choices: object, *, list_all: bool = True) -> str:
    """ "; did you mean 'x'?" for the closest of ``choices`` to ``name``, or (``list_all``)
    the choices themselves when none is close: the tail of an error about an unknown
    name."""
    options = sorted(str(c) for c in choices)  # type: ignore[attr-defined]
    close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; choose from: {', '.join(options)}" if list_all else ""


class FlywheelError(Exception):
    """Base of every error flywheel raises on purpose."""


class ConfigError(FlywheelError):
    """Settings or ``flywheel.toml`` hold an invalid or unsafe value."""


class ProjectError(FlywheelError):
    """There is no flywheel project where one was expected, or one already exists."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class DataError(FlywheelError):
    """A data source, or an example in it, cannot be used."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class InputError(DataError):
    """One input sent for prediction or feedback is invalid."""


class UnsupportedMediaError(InputError):
    """A file of a type the task does not take, or whose bytes are not its declared type."""


class NotFoundError(FlywheelError):
    """A named thing (prediction, model version, job, key, user) does not exist."""

    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class ModelError(FlywheelError):
    """A model cannot be built, trained, loaded or applied."""

    def __init__(self, message: str, *, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version


class NotFittedError(ModelError):
    """A model was used for prediction before it was trained."""


class ContractError(ModelError):
    """An architecture breaks the zoo's contract; ``clause`` names which part (e.g.
    "returns an ArchInfo", "output_shape", "onnx_export")."""

    def __init__(self, arch: str, clause: str, detail: str) -> None:
        super().__init__(f"architecture {arch!r} breaks the contract ({clause}): {detail}")
        self.arch = arch
        self.clause = clause
        self.detail = detail


class ConflictError(FlywheelError):
    """The request conflicts with what is stored: an ``Idempotency-Key`` reused for
    another answer, a registry operation the registry's state does not allow."""


class RegistryError(ConflictError):
    """A registry operation cannot be carried out (e.g. no earlier version to roll back to)."""


class AuthError(FlywheelError):
    """An API key is missing, unknown, revoked, or lacks the scope a route needs."""

    def __init__(self, message: str, *, missing_scope: str | None = None) -> None:
        super().__init__(message)
        #: set when the key is valid but lacks this scope (HTTP 403 rather than 401)
        self.missing_scope = missing_scope


class StorageError(FlywheelError):
    """Where models, checkpoints and blobs live (``storage_url``) cannot be reached, read
    or written: the message names the storage, the key and what went wrong (HTTP 503)."""
