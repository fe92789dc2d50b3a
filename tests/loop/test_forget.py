"""Forget a user: nothing of theirs is left in any table or the blob folder, every model
trained on their rows is out of service, and production is retrained without them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from flywheel import Project
from flywheel.errors import NotFoundError, RegistryError
from flywheel.privacy.forget import subject_digest
from flywheel.store.schema import DatasetVersion, Example, ModelVersion, User
from flywheel.store.search import search_store
from tests.factories import digit_png, digits_arrays, make_project


def _answer(project: Project, user: str, indices: range) -> None:
    _, labels = digits_arrays()
    for i in indices:
        p = project.predict(digit_png(i), user_id=user)
        project.record_feedback(p.prediction_id, label=str(labels[i]), user_id=user)


def test_forget_leaves_nothing_behind_and_retrains_without_the_user(project: Project) -> None:
    _answer(project, "theo", range(300, 330))
    _answer(project, "ann", range(330, 345))
    # ann also sent one of theo's images: that copy is hers and stays.
    _answer(project, "ann", range(300, 301))
    retrain = project.retrain()
    assert retrain.train is not None
    v2 = retrain.train.model.version
    project.promote(v2)  # (three epochs: whatever the gate said, serve it)
    theo = project.pseudonym("theo")
    assert theo is not None
    theirs = {project.blobs.put(digit_png(i)) for i in range(300, 330)}
    # The model trained on theo's rows is served, and a golden/queue item may refer to them.
    project.review_queue(limit=5)

    out = project.forget("theo")

    # Every cell of every table, read back: no pseudonym, no hash of an input of theirs.
    assert search_store(project.db.engine, {theo}) == []
    shared = project.blobs.put(digit_png(300))  # ann's copy
    gone = theirs - {shared}
    assert search_store(project.db.engine, gone) == []
    blob_files = {f"{p.parent.name}{p.name}" for p in Path(project.blobs.root).rglob("*")}
    assert not gone & blob_files
    assert shared in blob_files and out["inputs_kept_shared"] == 1
    assert out["blobs_deleted"] == len(gone)

    # Every version trained on theo's rows is listed, withdrawn, and its weights gone.
    assert out["versions_affected"] == [v2]
    with project.db.session() as s:
        mv = s.get(ModelVersion, v2)
        assert mv is not None and mv.withdrawn_at is not None
        assert not (project.settings.models_dir / f"v{v2}").exists()
        marked = s.get(DatasetVersion, out["dataset_versions_marked"][0])
        assert marked is not None and marked.erased is not None
        assert marked.erased["rows"] == out["erased"]["examples"] > 0
    assert v2 not in {m.version for m in project.models() if m.aliases}
    with pytest.raises(RegistryError, match="out of service"):
        project.promote(v2)

    # Production was retrained from scratch on the new dataset version, through the gate.
    new = out["retrain"]
    assert new is not None and new["dataset_version"] == out["dataset_version_new"]
    assert out["production_after"] in (new["version"], 1)
    assert out["production_after"] != v2
    # The withdrawn production was scored on the held-out rows that remain, before its
    # weights went: the retrain's cost is measured on the same rows.
    old = out["withdrawn_production_score"]
    assert old["version"] == v2 and 0 <= old["accuracy"] <= 1
    assert new["accuracy_change_vs_withdrawn"] == pytest.approx(
        new["accuracy"] - old["accuracy"], abs=1e-4
    )
    info = project.version_info(new["version"])
    assert info.training_config["warm_start"] is False
    assert info.gate is not None and info.gate["champion_version"] == 1  # the fallback
    with project.db.session() as s:
        rows = s.scalars(select(Example.user_id).where(Example.origin == "feedback")).all()
        assert theo not in rows and project.pseudonym("ann") in rows

    # The audit proves what was done without keeping the id.
    audit = project.audit_log("forget")
    assert len(audit) == 1 and audit[0]["subject"] == subject_digest(theo)
    d = audit[0]["detail"]
    assert d["counts_before"]["predictions"] == 30 and d["counts_before"]["feedback"] == 30
    assert set(d["counts_after"].values()) == {0}
    assert d["table_rows_after"]["predictions"] == d["table_rows_before"]["predictions"] - 30

    with pytest.raises(NotFoundError):
        project.forget("theo")


def test_forget_without_rows_in_production_does_not_retrain(project: Project) -> None:
    p = project.predict(digit_png(400), user_id="drive-by")
    assert p.model_version == 1
    out = project.forget("drive-by")
    assert out["versions_affected"] == [] and out["retrain"] is None
    assert out["production_after"] == 1 and out["erased"]["predictions"] == 1


def test_forget_an_imported_speaker_takes_probes_label_issues_and_spill_too(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from flywheel.data import ListSource
    from flywheel.store.schema import Prediction
    from tests.factories import digits_subset

    rows = [
        replace(
            ex,
            user_id="theo" if i % 3 == 0 else "ann",
            source_path=f"{i}_{'theo' if i % 3 == 0 else 'ann'}.png",
        )
        for i, ex in enumerate(digits_subset(120, 40))
    ]
    project = Project.init(
        tmp_path / "sp", ListSource("speakers", rows), settings={"epochs": 2, "image_size": 8}
    )
    project.train()
    theo = project.pseudonym("theo")
    assert theo is not None
    with project.db.session() as s:
        his = set(s.scalars(select(Example.input_hash).where(Example.user_id == theo)))
        dv = s.get(DatasetVersion, 1)
        assert dv is not None
        # A label-issue report that names one of his rows (as `flywheel data issues` does).
        dv.stats = {**dv.stats, "label_issues": {"issues": [
            {"input_hash": sorted(his)[0], "source_path": "0_theo.png", "label": "0"}
        ]}}  # fmt: skip
    # The review queue turns known examples into golden probes (predictions, no user).
    for i in range(40):
        project.predict(digit_png(1500 + i))
    for _ in range(6):
        project.review_queue(limit=20)
    with project.db.session() as s:
        probes = s.scalars(select(Prediction).where(Prediction.input_hash.in_(his))).all()
    assert probes  # some probe shows one of his inputs
    spill = project.settings.project_dir / "spill"
    spill.mkdir()
    (spill / "0001.jsonl").write_text(f'{{"user_id": "{theo}"}}\n{{"user_id": null}}\n')

    out = project.forget("theo")
    assert search_store(project.db.engine, {theo, "theo"}) == []
    assert search_store(project.db.engine, his) == []
    assert not any(project.blobs.exists(h) for h in his)
    assert out["spill_rows_deleted"] == 1
    assert (spill / "0001.jsonl").read_text() == '{"user_id": null}\n'
    project.close()


def test_a_forgotten_users_evaluation_rows_leave_with_them(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", settings={"max_user_share": 1.0})
    _answer(project, "judge", range(300, 360))
    _answer(project, "other", range(360, 380))
    with project.db.session() as s:
        for user in ("judge", "other"):
            row = s.get(User, project.pseudonym(user))
            assert row is not None
            row.trust = 0.9
    info, _ = project.services.feedback.curate(naive=False)
    assert info is not None and info.n_evaluation > 0
    judge = project.pseudonym("judge")
    with project.db.session() as s:
        theirs = set(
            s.scalars(
                select(Example.input_hash).where(
                    Example.split == "evaluation", Example.user_id == judge
                )
            )
        )
    assert theirs
    out = project.forget("judge", retrain=False)
    after = project.dataset()
    assert after.version == out["dataset_version_new"]
    left = {h for h, *_ in project.services.data.training_set().evaluation}
    assert not left & theirs and after.n_evaluation == len(left) < info.n_evaluation
    assert search_store(project.db.engine, {judge}) == []
    project.close()
