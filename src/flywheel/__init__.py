"""flywheel: turn users' feedback into better models, safely and continuously.

The public API is the ``Project`` façade, its ``Settings``, and the error tree.
"""

from typing import TYPE_CHECKING

from flywheel.errors import (
    AuthError,
    ConfigError,
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
    from flywheel.project import Project

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Project pulls in torch; importing it lazily lets torch-free parts (an exported
    # ONNX bundle's runtime, the codecs) be imported without it.
    if name == "Project":
        from flywheel.project import Project

        return Project
    raise AttributeError(f"module 'flywheel' has no attribute {name!r}")


__all__ = [
    "AuthError",
    "ConfigError",
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
