"""Dataset versions and their rows, in the caller's transaction.

A dataset version is a fixed set of examples (its membership rows); every query of
the rows of a version goes through ``in_version``. Functions take the caller's
``Session`` and never open one; a miss returns ``None`` and the caller decides.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from flywheel.data.datasets import (
    EVALUATION,
    HOLDOUT,
    TRAIN,
    DatasetInfo,
    Row,
    WeightedRow,
    content_hash,
)
from flywheel.store.schema import DatasetVersion, DatasetVersionExample, Example

__all__ = [
    "examples",
    "first_input",
    "get",
    "in_version",
    "info",
    "latest",
    "new_version",
    "probe_pool",
    "rows",
    "source_paths",
    "split_rows",
    "versions",
    "weighted_rows",
]

Q = TypeVar("Q", bound=Select)


def in_version(q: Q, version: int) -> Q:
    """``q`` (a select over examples) limited to the examples of dataset ``version``."""
    return q.join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id).where(
        DatasetVersionExample.dataset_version_id == version
    )


def latest(s: Session) -> DatasetVersion | None:
    return s.scalars(select(DatasetVersion).order_by(DatasetVersion.id.desc()).limit(1)).first()


def get(s: Session, version: int | None) -> DatasetVersion | None:
    """Dataset ``version`` (None: the newest)."""
    return latest(s) if version is None else s.get(DatasetVersion, version)


def versions(s: Session) -> list[DatasetVersion]:
    return list(s.scalars(select(DatasetVersion).order_by(DatasetVersion.id)))


def info(dv: DatasetVersion, task: str) -> DatasetInfo:
    st = dv.stats
    return DatasetInfo(
        version=dv.id,
        content_hash=dv.content_hash,
        parent=dv.parent_id,
        task=str(st.get("task", task)),
        n_train=int(st["n_train"]),
        n_holdout=int(st["n_holdout"]),
        n_evaluation=int(st.get("n_evaluation", 0)),
        n_feedback=int(st["n_feedback"]),
        labels=list(st["labels"]),
        cleaning=dict(st.get("cleaning", {})),
        preprocessing=dict(dv.preprocessing),
        stats=dict(st),
        created_at=dv.created_at,
    )


def weighted_rows(
    s: Session, version: int, split: str, *, base_only: bool = False
) -> list[WeightedRow]:
    """(input hash, label, value, weight, user) of a dataset version's rows of ``split``."""
    q = in_version(
        select(Example.input_hash, Example.label, Example.value, Example.weight, Example.user_id),
        version,
    ).where(Example.split == split)
    # Order by content, not by arrival: the same dataset version gives the same rows in
    # the same order, hence (with a fixed seed) the same model.
    q = q.order_by(Example.input_hash, Example.label, Example.value, Example.user_id)
    if base_only:  # the imported rows, without any from feedback
        q = q.where(Example.origin != "feedback")
    return [(h, lab, val, w, u) for h, lab, val, w, u in s.execute(q)]


def rows(s: Session, version: int, split: str) -> list[Row]:
    """(input hash, label, value) of a dataset version's rows of ``split``, by content."""
    return [(h, lab, val) for h, lab, val, *_ in weighted_rows(s, version, split)]


def split_rows(s: Session, version: int) -> list[tuple[str, str, str | None, str]]:
    """(input hash, split, label, origin) of every row of a dataset version."""
    cols = select(Example.input_hash, Example.split, Example.label, Example.origin)
    q = in_version(cols, version)
    return [(h, sp, lab, o) for h, sp, lab, o in s.execute(q.order_by(Example.input_hash))]


def examples(s: Session, version: int) -> list[Example]:
    return list(s.scalars(in_version(select(Example), version)))


def first_input(s: Session, version: int, split: str) -> str | None:
    """The input hash of one row of ``split`` (the first by content; None: none)."""
    q = in_version(select(Example.input_hash), version).where(Example.split == split)
    return s.scalar(q.order_by(Example.input_hash).limit(1))


def source_paths(s: Session, version: int) -> dict[str, str | None]:
    """Input hash → the file it was imported from (None: it came from feedback)."""
    q = in_version(select(Example.input_hash, Example.source_path), version)
    return {h: p for h, p in s.execute(q).all()}


def probe_pool(s: Session, version: int) -> list[tuple[int, str]]:
    """(example id, input hash) of the version's imported training rows, by id: the
    inputs whose label is known, from which the review queue draws golden probes."""
    q = in_version(select(Example.id, Example.input_hash), version).where(
        Example.split == TRAIN, Example.origin == "base"
    )
    return [(int(i), h) for i, h in s.execute(q.order_by(Example.id)).all()]


def new_version(
    s: Session,
    examples: list[Example],
    *,
    task: str,
    parent: int | None,
    source: str,
    preprocessing: dict[str, Any],
    labels: list[str],
    extra: dict[str, Any],
) -> DatasetVersion:
    """A new dataset version of ``examples`` (already in the session), with its stats."""
    counts = Counter(e.split for e in examples)
    stats: dict[str, Any] = {
        "task": task,
        "n_train": counts.get(TRAIN, 0),
        "n_holdout": counts.get(HOLDOUT, 0),
        "n_evaluation": counts.get(EVALUATION, 0),
        "n_feedback": sum(e.origin == "feedback" for e in examples),
        "labels": labels,
        **extra,
    }
    if labels:
        stats["class_counts"] = dict(Counter(e.label for e in examples if e.split == TRAIN))
    dv = DatasetVersion(
        content_hash=content_hash(
            (e.input_hash, e.label if e.label is not None else repr(e.value), e.split)
            for e in examples
        ),
        parent_id=parent,
        source=source,
        preprocessing=preprocessing,
        stats=stats,
    )
    s.add(dv)
    s.flush()
    s.add_all(DatasetVersionExample(dataset_version_id=dv.id, example_id=e.id) for e in examples)
    s.flush()
    return dv
