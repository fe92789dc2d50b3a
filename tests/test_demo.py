"""The demo's loop for two short cycles, over real HTTP."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from flywheel import Project
from flywheel.demo import DemoConfig, run_demo
from flywheel.store.schema import Example, Feedback, Prediction


def test_demo_two_cycles_learns_from_feedback(tmp_path: Path) -> None:
    events: list[str] = []
    cfg = DemoConfig(cycles=2, epochs=12, requests_per_cycle=250, seed=0)
    result = run_demo(cfg, project_dir=tmp_path / "demo", on_event=lambda k, _d: events.append(k))
    rows = result.to_json()["cycles"]
    assert [r["cycle"] for r in rows] == [0, 1, 2]
    assert set(rows[1]) >= {
        "cycle",
        "feedback_used",
        "accuracy",
        "champion_accuracy",
        "promoted",
        "model_version",
    }
    assert rows[0]["feedback_used"] == 0
    assert all(r["feedback_used"] > 100 for r in rows[1:])
    assert [r["dataset_version"] for r in rows] == [1, 2, 3]
    assert [r["model_version"] for r in rows] == [1, 2, 3]
    # Each challenger is gated against the model that was in production.
    assert rows[1]["champion_accuracy"] == rows[0]["accuracy"]
    # Users' answers make the model better than the one trained on the labelled slice.
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.05
    assert events.count("cycle") == 3

    project = Project.open(tmp_path / "demo")
    with project.db.session() as s:
        n_pred = s.scalar(select(func.count()).select_from(Prediction))
        n_fb = s.scalar(select(func.count()).select_from(Feedback))
        n_users = s.scalar(select(func.count(func.distinct(Prediction.user_id))))
        from_feedback = s.scalar(
            select(func.count()).select_from(Example).where(Example.origin == "feedback")
        )
    assert n_pred == 500
    assert n_fb == sum(r["feedback_sent"] for r in rows)
    assert n_users == cfg.users
    assert from_feedback == sum(r["feedback_used"] for r in rows)
    project.close()


def test_the_demo_repeats_exactly_with_the_same_seed(tmp_path: Path) -> None:
    cfg = DemoConfig(cycles=2, epochs=4, requests_per_cycle=150, seed=3)
    runs = []
    for name in ("a", "b"):
        result = run_demo(cfg, project_dir=tmp_path / name)
        project = Project.open(tmp_path / name)
        with project.db.session() as s:
            weights = s.execute(
                select(Example.user_id, Example.input_hash, Example.label, Example.weight)
                .where(Example.origin == "feedback")
                .order_by(Example.input_hash, Example.label)
            ).all()
        project.close()
        runs.append(([r["accuracy"] for r in result.to_json()["cycles"]], weights))
    # Same pseudonyms, same rows, same trust weights to the last bit, same models.
    assert runs[0] == runs[1]
    assert runs[0][1]  # the runs did learn from feedback
