"""The loop's workflows: the steps that cross stages and transactions, each reading top
to bottom — train (``train``), one turn of the loop (``retrain``), evaluate and label
issues (``evaluate``), forget a user (``forget``), import a model trained elsewhere
(``imports``) — over the stage services (``services``)."""

from flywheel.loop.imports import ImportResult
from flywheel.loop.retrain import RetrainResult
from flywheel.loop.services import Services
from flywheel.loop.train import ProgressFn, TrainResult

__all__ = ["ImportResult", "ProgressFn", "RetrainResult", "Services", "TrainResult"]
