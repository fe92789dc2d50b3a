"""One turn of the loop: curate the new feedback into a dataset version, then train a
challenger on it (warm-started from production), gate it and promote it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flywheel.data import DatasetInfo
from flywheel.loop.services import Services
from flywheel.loop.train import ProgressFn, TrainResult, stages, train
from flywheel.training import TrainConfig

__all__ = ["RetrainResult", "curate", "retrain"]


@dataclass(frozen=True)
class RetrainResult:
    feedback_used: int
    curation: dict[str, int]
    dataset: DatasetInfo | None
    train: TrainResult | None
    skipped_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feedback_used": self.feedback_used,
            "curation": self.curation,
            "dataset_version": None if self.dataset is None else self.dataset.version,
            "skipped": self.train is None,
            "reason": self.skipped_reason,
        }
        if self.train is not None:
            out |= self.train.to_json()
        return out


def curate(sv: Services) -> tuple[DatasetInfo | None, dict[str, Any]]:
    """Make a new dataset version from the feedback not yet used; None when there is none.

    Trust is re-estimated first (unless curation is naive, or the task a regression);
    then quarantined users' answers are held back, conflicting answers settled by a
    trust-weighted vote, each user capped at ``max_user_share`` of the new rows, and
    each row weighted by its user's trust.
    """
    naive = sv.ctx.settings.curation == "naive"
    if not sv.ctx.task.is_regression and not naive:
        sv.users.update_trust()
    return sv.feedback.curate(naive=naive)


def retrain(
    sv: Services, config: TrainConfig, *, on_epoch: ProgressFn | None = None
) -> RetrainResult:
    """Curate → train (warm start) → evaluate → gate → promote."""
    stages(on_epoch)("curating the new answers: trust, conflicts, caps, near-duplicates")
    dataset, summary = curate(sv)
    if dataset is None:
        return RetrainResult(
            0, summary, None, None, "no new feedback with a usable label since the last retrain"
        )
    result = train(sv, config, on_epoch=on_epoch, reason="retrain")
    return RetrainResult(summary["rows"], summary, dataset, result)
