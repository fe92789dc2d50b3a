"""The records of the loop's traffic: an answer and its log row, who contributed rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from flywheel.feedback.records import answer, contribution

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_an_answer_and_its_log_row_say_the_same() -> None:
    result, row = answer(
        3, ["a", "b"], np.array([0.25, 0.75]), content=b"img", user_id="u_1", latency_ms=2.0
    )
    assert (result.model_version, result.label, result.value) == (3, "b", None)
    assert result.probabilities == {"a": 0.25, "b": 0.75}
    assert row["id"] == result.prediction_id and row["content"] == b"img"
    assert (row["label"], row["probabilities"], row["user_id"]) == (
        "b",
        result.probabilities,
        "u_1",
    )
    result, row = answer(3, [], np.float32(1.5), content=b"{}", user_id=None, latency_ms=1.0)
    assert (result.label, result.probabilities, result.value) == (None, None, 1.5)
    assert row["probabilities"] == {} and row["value"] == 1.5


def test_contribution_names_the_top_user_and_the_share_from_new_users() -> None:
    seen = {"old": T0 - timedelta(days=1), "new": T0 + timedelta(hours=1)}
    who = contribution(["old", "new", "new", None], seen, T0, first_feedback=False)
    assert who == {
        "first_feedback": False,
        "rows": 4,
        "users": 2,
        "top_user": "new",
        "top_user_share": 0.5,
        "new_user_share": 0.5,
    }
    assert contribution([], {}, T0, first_feedback=True)["top_user_share"] == 0.0


def test_an_answer_that_is_not_a_number_is_refused() -> None:
    import pytest

    from flywheel.errors import InputError

    for output in (np.array([np.nan, 1.0]), np.float32(np.inf)):
        with pytest.raises(InputError, match="not a finite number"):
            answer(1, ["a", "b"], output, content=b"x", user_id=None, latency_ms=0.0)
