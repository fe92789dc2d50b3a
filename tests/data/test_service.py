"""Data's service on its own: an import, the rows a run reads, arrays, analyses kept
beside a version."""

from __future__ import annotations

import numpy as np

from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN


def test_a_training_run_reads_one_snapshot_of_the_newest_version(project: Project) -> None:
    ts = project.services.data.training_set()
    info = project.dataset()
    assert (ts.version, ts.content_hash, ts.labels) == (1, info.content_hash, info.labels)
    assert len(ts.train) == info.n_train == 150 and len(ts.holdout) == info.n_holdout == 60
    assert not {h for h, *_ in ts.train} & {h for h, *_ in ts.holdout}
    assert [r[0] for r in ts.train] == sorted(r[0] for r in ts.train)  # by content
    assert ts.erased is None and ts.contribution == {} and ts.label_issues == {}


def test_rows_decode_as_the_model_reads_them(project: Project) -> None:
    spec = project.serving_model().spec
    rows = project.services.data.rows(1, HOLDOUT)
    data = project.services.data.arrays(rows, spec)
    assert data.x.shape == (60, *spec.input_shape) and data.x.dtype == np.float32
    assert data.y.tolist() == [spec.labels.index(str(lab)) for _, lab, _ in rows]
    train = project.dataset_arrays(TRAIN)
    assert len(train) == 150 and train.x.shape[1:] == data.x.shape[1:]


def test_an_analysis_is_kept_beside_the_version_without_changing_it(project: Project) -> None:
    before = project.dataset()
    project.services.data.add_label_issues(1, {"n_issues": 0, "issues": []})
    after = project.dataset()
    assert after.content_hash == before.content_hash
    assert after.stats["label_issues"] == {"n_issues": 0, "issues": []}
    assert [d.version for d in project.datasets()] == [1]
