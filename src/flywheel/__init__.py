"""flywheel: turn users' feedback into better models, safely and continuously.

The public API is the ``Project`` façade, its ``Settings``, the error tree, and the
HTTP API's client (``Client``, ``AsyncClient``).
"""

from typing import TYPE_CHECKING

from flywheel.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    DataError,
    FlywheelError,
    InputError,
    ModelError,
    NotFittedError,
    NotFoundError,
    ProjectError,
    RegistryError,
)
from flywheel.settings import Settings

if TYPE_CHECKING:
    from flywheel.client import AsyncClient, Client
    from flywheel.project import Project

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Project pulls in torch; importing it lazily lets torch-free parts (an exported
    # ONNX bundle's runtime, the codecs) be imported without it.
    if name == "Project":
        from flywheel.project import Project

        return Project
    # The client brings httpx (~0.1 s): only for the code that talks to a server.
    if name in ("Client", "AsyncClient"):
        from flywheel import client

        return getattr(client, name)
    raise AttributeError(f"module 'flywheel' has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "ConfigError",
    "ConflictError",
    "DataError",
    "FlywheelError",
    "InputError",
    "ModelError",
    "NotFittedError",
    "NotFoundError",
    "Project",
    "ProjectError",
    "RegistryError",
    "Settings",
    "__version__",
]
