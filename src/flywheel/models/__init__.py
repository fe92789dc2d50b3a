"""Models: architectures by name, rebuilt from a JSON ``ModelSpec``."""

# Each architecture module registers its architectures with the zoo on import.
from flywheel.models import audio, tabular, text, vision  # noqa: F401
from flywheel.models.spec import SPEC_FORMAT, ModelSpec
from flywheel.models.tabular import MLPRegressor
from flywheel.models.vision import CNN32, SeedCNN
from flywheel.models.zoo import (
    ArchInfo,
    arch_info,
    build_spec,
    create_model,
    default_hparams,
    known_archs,
    register_arch,
)

__all__ = [
    "CNN32",
    "SPEC_FORMAT",
    "ArchInfo",
    "MLPRegressor",
    "ModelSpec",
    "SeedCNN",
    "arch_info",
    "build_spec",
    "create_model",
    "default_hparams",
    "known_archs",
    "register_arch",
]
