"""flywheel: turn users' feedback into better models, safely and continuously.

The public API is the ``Project`` façade, its ``Settings``, and the error tree.
"""

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
from flywheel.project import Project
from flywheel.settings import Settings

__version__ = "0.1.0"

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
