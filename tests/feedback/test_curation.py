"""Curation: users' answers become one training row per input, by majority vote."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from flywheel.feedback import Answer, CuratedRow, curate

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _answer(fid: str, digest: str, label: str, user: str | None, minute: int) -> Answer:
    return Answer(
        feedback_id=fid,
        input_hash=digest,
        label=label,
        user_id=user,
        created_at=T0 + timedelta(minutes=minute),
    )


def test_holdout_inputs_are_dropped_and_counted() -> None:
    answers = [
        _answer("f1", "held", "3", "ann", 1),
        _answer("f2", "held", "3", "bob", 2),
        _answer("f3", "new", "5", "ann", 3),
    ]
    c = curate(answers, holdout_inputs=["held"], known_inputs=[])
    assert c.answers == 3
    assert c.dropped_holdout == 2
    assert c.dropped_known == 0
    assert c.rows == [CuratedRow("new", "5", "f3", "ann", 1)]


def test_inputs_already_known_are_dropped_and_counted() -> None:
    answers = [_answer("f1", "known", "1", "ann", 1), _answer("f2", "new", "2", "ann", 2)]
    c = curate(answers, holdout_inputs=[], known_inputs={"known"})
    assert c.dropped_known == 1
    assert c.dropped_holdout == 0
    assert [r.input_hash for r in c.rows] == ["new"]


def test_holdout_wins_over_known() -> None:
    c = curate(
        [_answer("f1", "both", "1", "ann", 1)], holdout_inputs=["both"], known_inputs=["both"]
    )
    assert (c.dropped_holdout, c.dropped_known, c.rows) == (1, 0, [])


def test_two_users_agreeing_make_one_row_with_two_votes() -> None:
    answers = [_answer("f1", "img", "7", "ann", 1), _answer("f2", "img", "7", "bob", 2)]
    c = curate(answers, holdout_inputs=[], known_inputs=[])
    assert c.rows == [CuratedRow("img", "7", "f2", "bob", 2)]
    assert c.merged_duplicates == 1


def test_the_majority_wins_over_a_more_recent_minority_answer() -> None:
    answers = [
        _answer("f1", "img", "7", "ann", 1),
        _answer("f2", "img", "7", "bob", 2),
        _answer("f3", "img", "1", "cy", 3),
    ]
    c = curate(answers, holdout_inputs=[], known_inputs=[])
    assert c.rows == [CuratedRow("img", "7", "f2", "bob", 2)]


def test_a_tie_goes_to_the_most_recent_answer() -> None:
    answers = [
        _answer("f2", "img", "1", "bob", 5),
        _answer("f1", "img", "7", "ann", 1),
    ]
    c = curate(answers, holdout_inputs=[], known_inputs=[])
    assert c.rows == [CuratedRow("img", "1", "f2", "bob", 1)]


def test_one_user_answering_twice_counts_once_with_their_latest_answer() -> None:
    # Were ann counted twice, "7" would win 2-1; counted once, it is a 1-1 tie.
    answers = [
        _answer("f1", "img", "7", "ann", 1),
        _answer("f2", "img", "7", "ann", 2),
        _answer("f3", "img", "1", "bob", 3),
    ]
    c = curate(answers, holdout_inputs=[], known_inputs=[])
    assert c.rows == [CuratedRow("img", "1", "f3", "bob", 1)]
    assert c.merged_duplicates == 2


def test_a_user_changing_their_answer_counts_only_the_latest() -> None:
    answers = [
        _answer("f2", "img", "1", "ann", 2),
        _answer("f1", "img", "7", "ann", 1),
    ]
    c = curate(answers, holdout_inputs=[], known_inputs=[])
    assert c.rows == [CuratedRow("img", "1", "f2", "ann", 1)]


def test_anonymous_answers_each_count() -> None:
    answers = [
        _answer("f1", "img", "4", None, 1),
        _answer("f2", "img", "4", None, 2),
        _answer("f3", "img", "9", "ann", 3),
    ]
    c = curate(answers, holdout_inputs=[], known_inputs=[])
    assert c.rows == [CuratedRow("img", "4", "f2", None, 2)]


def test_rows_are_one_per_input_in_content_order() -> None:
    answers = [
        _answer("f3", "b", "2", "ann", 3),
        _answer("f1", "a", "1", "ann", 1),
        _answer("f2", "c", "3", "bob", 2),
    ]
    c = curate(answers, holdout_inputs=[], known_inputs=[])
    # By input, not by arrival: the same answers give the same rows in the same order.
    assert [(r.input_hash, r.feedback_id) for r in c.rows] == [
        ("a", "f1"),
        ("b", "f3"),
        ("c", "f2"),
    ]
    assert curate(answers[::-1], holdout_inputs=[], known_inputs=[]).rows == c.rows
    assert c.merged_duplicates == 0


def test_no_answers_make_no_rows() -> None:
    c = curate([], holdout_inputs=["x"], known_inputs=["y"])
    assert (c.rows, c.answers, c.dropped_holdout, c.dropped_known) == ([], 0, 0, 0)


def test_trust_weighs_the_vote_and_the_cap_limits_one_user() -> None:
    liar = [
        Answer(f"l{i}", "x", "cat", f"liar{i}", T0 + timedelta(minutes=i), weight=0.2)
        for i in range(3)
    ]
    honest = [Answer("h1", "x", "dog", "honest", T0, weight=0.95)]
    (row,) = curate(liar + honest, [], []).rows
    assert (row.label, row.user_id, row.votes, row.weight) == ("dog", "honest", 1, 0.95)

    spam = [Answer(f"s{i}", f"in{i}", "cat", "bulk", T0, weight=1.0) for i in range(8)]
    others = [Answer(f"o{i}", f"other{i}", "dog", f"u{i}", T0, weight=1.0) for i in range(4)]
    c = curate(spam + others, [], [], max_user_share=0.25)
    by_user = Counter(r.user_id for r in c.rows)
    assert by_user["bulk"] == 3  # 25% of the 12 rows
    assert c.capped == {"bulk": 5}
    assert all(by_user[f"u{i}"] == 1 for i in range(4))
