"""The façade: its exact surface, and a project that reopens with everything in it."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

from flywheel import Project
from flywheel.loop import Services
from tests.factories import digit_png, make_project

#: every public name of Project: a change to this set is a decision, made here
SURFACE = {
    # construction, and what a project is made of
    "open", "init", "close", "settings", "task", "db", "blobs", "cache", "prediction_log",
    # data
    "dataset", "datasets", "dataset_arrays",
    # training, evaluation and the loop
    "train_config", "train", "has_interrupted_run", "evaluate", "find_label_issues",
    "curate", "retrain", "export",
    # serving
    "predict", "predict_batch", "log_predictions", "prediction_journal", "scrubs_inputs",
    "at_the_door",
    "pseudonym", "serving_model", "stored_input",
    # feedback, users, explanations, monitoring
    "record_feedback", "record_feedback_many", "revise_feedback", "review_queue", "users",
    "update_trust",
    "quarantine", "release", "explain", "explanation_png", "stats", "monitoring",
    # the registry
    "models", "version_info", "production_version", "production_state", "promote", "rollback",
    "import_model",
    # privacy and user rights
    "forget", "retrain_after_forget", "privacy_ledger", "audit_log", "apply_retention",
    "rotate_user_key", "reload_user_key",
    # API keys and dashboard sessions
    "create_key", "list_keys", "revoke_key", "has_keys", "authenticate", "open_ui_session",
    "ui_session", "end_ui_session",
    # jobs
    "create_job", "claim_job", "run_job", "job_log", "jobs", "job", "wait_job",
    "recover_jobs", "heartbeat_jobs", "lease", "release_lease", "retrain_policy",
    # webhooks
    "deliver_webhooks", "webhook_deliveries",
}  # fmt: skip


def test_the_facade_has_exactly_its_verbs(project: Project) -> None:
    assert {n for n in dir(Project) if not n.startswith("_")} == SURFACE
    # ...and one attribute of its own: the stage services it delegates to.
    assert set(vars(project)) == {"services"}
    assert isinstance(project.services, Services)


def test_every_verb_delegates_in_a_few_lines() -> None:
    """A verb is its signature, its docstring and at most three statements (``init``,
    which makes the folder, five)."""
    long = {}
    for name in SURFACE:
        member = inspect.getattr_static(Project, name)
        func = getattr(member, "fget", None) or getattr(member, "__func__", member)
        (node,) = ast.parse(textwrap.dedent(inspect.getsource(func))).body
        assert isinstance(node, ast.FunctionDef)
        body = node.body[1:] if ast.get_docstring(node) else node.body
        if len(body) > (5 if name == "init" else 3):
            long[name] = len(body)
    assert long == {}


def test_reopening_a_project_keeps_everything(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    pid = project.predict(digit_png(1)).prediction_id
    project.close()
    again = Project.open(tmp_path / "p")
    assert again.production_version() == 1
    again.record_feedback(pid, label="1")
    assert again.dataset().version == 1
    again.close()
