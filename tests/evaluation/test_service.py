"""Monitoring's service: calls and feedback per version and label, live accuracy."""

from __future__ import annotations

from flywheel import Project
from tests.factories import digit_png


def test_stats_count_calls_per_version_and_label_and_live_accuracy(project: Project) -> None:
    preds = [project.predict(digit_png(i)) for i in range(500, 506)]
    for p in preds[:4]:
        project.record_feedback(p.prediction_id, correct=p is not preds[0])
    stats = project.stats(minutes=60)
    assert stats["task"] == "image-classification"
    assert stats["calls"]["total"] == 6 and stats["calls"]["per_version"] == {"1": 6}
    assert sum(stats["calls"]["per_label"].values()) == 6
    assert sum(stats["calls"]["per_minute"].values()) == 6
    assert stats["feedback"] == {"total": 4, "agreed": 3, "disagreed": 1}
    (v1,) = stats["versions"]
    assert (v1["version"], v1["calls"], v1["feedback"], v1["live_accuracy"]) == (1, 6, 4, 0.75)
    assert v1["holdout_accuracy"] == project.version_info(1).metrics["accuracy"]
