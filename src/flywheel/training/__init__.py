"""Training: the fit loop and its frozen config."""

from flywheel.training.fit import (
    EpochReport,
    FitResult,
    TrainConfig,
    fit,
    predict_proba,
    seed_everything,
)

__all__ = ["EpochReport", "FitResult", "TrainConfig", "fit", "predict_proba", "seed_everything"]
