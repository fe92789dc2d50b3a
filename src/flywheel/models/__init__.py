"""Models: architectures by name, rebuilt from a JSON ``ModelSpec``."""

from flywheel.models.spec import SPEC_FORMAT, ModelSpec
from flywheel.models.zoo import SeedCNN, create_model, default_hparams, known_archs, register_arch

__all__ = [
    "SPEC_FORMAT",
    "ModelSpec",
    "SeedCNN",
    "create_model",
    "default_hparams",
    "known_archs",
    "register_arch",
]
