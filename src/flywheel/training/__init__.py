"""Training: the fit loop, its frozen config, checkpoints, augmentation, DP-SGD and
federated rounds, and the set-up of a run (config from settings, the model's spec)."""

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
from flywheel.training.setup import model_spec, sampling_units, train_config

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
    "model_spec",
    "predict_outputs",
    "predict_proba",
    "sampling_units",
    "save_checkpoint",
    "seed_everything",
    "split_validation",
    "train_config",
]
