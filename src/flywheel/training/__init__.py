"""Training: the fit loop, its frozen config, checkpoints and augmentation."""

from flywheel.training.augment import audio_augment, image_augment, make_augment
from flywheel.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from flywheel.training.fit import (
    EpochReport,
    FitResult,
    TrainConfig,
    fit,
    predict_outputs,
    predict_proba,
    seed_everything,
    split_validation,
)

__all__ = [
    "Checkpoint",
    "EpochReport",
    "FitResult",
    "TrainConfig",
    "audio_augment",
    "fit",
    "image_augment",
    "load_checkpoint",
    "make_augment",
    "predict_outputs",
    "predict_proba",
    "save_checkpoint",
    "seed_everything",
    "split_validation",
]
