"""Models: architectures by name (the zoo's and plugins'), rebuilt from a JSON ``ModelSpec``."""

# Each architecture module registers its architectures with the zoo on import.
from flywheel.models import audio, tabular, text, vision  # noqa: F401
from flywheel.models.contract import ArchInfo, check_declaration
from flywheel.models.plugins import ENTRY_POINTS
from flywheel.models.spec import IMPORTED_ARCH, SPEC_FORMAT, ModelSpec
from flywheel.models.tabular import MLPRegressor
from flywheel.models.vision import CNN32, SeedCNN, check_input
from flywheel.models.zoo import (
    arch_info,
    build_spec,
    create_model,
    default_hparams,
    known_archs,
    register_arch,
)

__all__ = [
    "CNN32",
    "ENTRY_POINTS",
    "IMPORTED_ARCH",
    "SPEC_FORMAT",
    "ArchInfo",
    "MLPRegressor",
    "ModelSpec",
    "SeedCNN",
    "arch_info",
    "build_spec",
    "check_declaration",
    "check_input",
    "create_model",
    "default_hparams",
    "known_archs",
    "register_arch",
]
