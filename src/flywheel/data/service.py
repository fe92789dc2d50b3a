"""Data's service: importing a source as a project's first dataset version, the
versions and their rows, and rows decoded into arrays. Each public method commits what
it writes in one transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flywheel.context import Context
from flywheel.data import repo
from flywheel.data.cleaning import Cleaned, clean
from flywheel.data.datasets import (
    EVALUATION,
    HOLDOUT,
    TRAIN,
    Arrays,
    DatasetInfo,
    Row,
    WeightedRow,
    load_arrays,
    split_by_group,
    targets,
)
from flywheel.data.sources import RawExample, Source
from flywheel.errors import DataError, NotFoundError, ProjectError
from flywheel.models import ModelSpec
from flywheel.privacy.door import Door
from flywheel.privacy.identity import IdentityService
from flywheel.privacy.keychain import check_user_id
from flywheel.store import ensure_user
from flywheel.store.schema import DatasetVersion, Example

__all__ = ["DatasetService", "TrainingSet"]

ImportProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class TrainingSet:
    """What a training run reads of the newest dataset version, in one snapshot."""

    version: int
    content_hash: str
    preprocessing: dict[str, Any]
    labels: list[str]
    #: the version's erasure mark when the run started (a forget sets it)
    erased: dict[str, Any] | None
    #: who gave the version's feedback rows (empty: none came from feedback)
    contribution: dict[str, Any]
    #: the rows `flywheel data issues` flagged (empty: not analysed)
    label_issues: dict[str, Any]
    train: list[WeightedRow]
    holdout: list[Row]
    #: the answers set aside for judging (``eval_share``): the gate scores on both
    evaluation: list[Row]


class DatasetService:
    def __init__(self, ctx: Context, identity: IdentityService, door: Door) -> None:
        self.ctx = ctx
        self.identity = identity
        self.door = door

    # -- reading ---------------------------------------------------------------------

    def _latest(self, s: Any) -> DatasetVersion:
        dv = repo.latest(s)
        if dv is None:
            raise ProjectError(
                "the project has no dataset version", path=self.ctx.settings.project_dir
            )
        return dv

    def info(self, version: int | None = None) -> DatasetInfo:
        """Dataset ``version`` (None: the newest)."""
        with self.ctx.db.session() as s:
            dv = self._latest(s) if version is None else repo.get(s, version)
            if dv is None:
                raise NotFoundError("dataset version", version)
            return repo.info(dv, self.ctx.task.name)

    def versions(self) -> list[DatasetInfo]:
        with self.ctx.db.session() as s:
            return [repo.info(dv, self.ctx.task.name) for dv in repo.versions(s)]

    def training_set(self) -> TrainingSet:
        with self.ctx.db.session() as s:
            dv = self._latest(s)
            return TrainingSet(
                version=dv.id,
                content_hash=dv.content_hash,
                preprocessing=dict(dv.preprocessing),
                labels=list(dv.stats["labels"]),
                erased=dv.erased,
                contribution=dict(dv.stats.get("contribution", {})),
                label_issues=dict(dv.stats.get("label_issues", {})),
                train=repo.weighted_rows(s, dv.id, TRAIN),
                holdout=repo.rows(s, dv.id, HOLDOUT),
                evaluation=repo.rows(s, dv.id, EVALUATION),
            )

    def reference_base(self, version: int) -> tuple[DatasetInfo, list[WeightedRow], set[str]]:
        """(the version, its imported training rows, the inputs that judge models — held
        out or set aside for evaluation): what a gate reference is trained on besides the
        feedback, and what it must not be."""
        with self.ctx.db.session() as s:
            dv = s.get(DatasetVersion, version)
            if dv is None:
                raise NotFoundError("dataset version", version)
            base = repo.weighted_rows(s, version, TRAIN, base_only=True)
            judged = repo.rows(s, version, HOLDOUT) + repo.rows(s, version, EVALUATION)
            held = {h for h, _, _ in judged}
            return repo.info(dv, self.ctx.task.name), base, held

    def rows(self, version: int, split: str) -> list[Row]:
        with self.ctx.db.session() as s:
            return repo.rows(s, version, split)

    def evaluation_rows(self, *, train: bool = False) -> tuple[list[Row], list[Row]]:
        """(held-out rows, and with ``train`` the training rows) of the newest version."""
        with self.ctx.db.session() as s:
            dv = self._latest(s)
            return repo.rows(s, dv.id, HOLDOUT), repo.rows(s, dv.id, TRAIN) if train else []

    def newest_rows(self, split: str) -> tuple[DatasetInfo, list[Row]]:
        """The newest version and its rows of ``split``."""
        with self.ctx.db.session() as s:
            dv = self._latest(s)
            return repo.info(dv, self.ctx.task.name), repo.rows(s, dv.id, split)

    def source_paths(self, version: int) -> dict[str, str | None]:
        with self.ctx.db.session() as s:
            return repo.source_paths(s, version)

    def arrays(self, rows: Sequence[Row], spec: ModelSpec) -> Arrays:
        """Rows decoded from the blob folder as a model of ``spec`` reads them."""
        labels = list(spec.labels) if spec.labels else None
        read = self.ctx.blobs.reader([r[0] for r in rows])  # remote: fetched together
        return load_arrays(rows, read, self.ctx.codec, spec.preprocessing, labels)

    # -- writing ---------------------------------------------------------------------

    def add_label_issues(self, version: int, found: dict[str, Any]) -> None:
        """Keep a label-issue analysis beside the version; its content (and hash) stay."""
        with self.ctx.db.session() as s:
            dv = s.get(DatasetVersion, version)
            if dv is None:
                raise NotFoundError("dataset version", version)
            dv.stats = {**dv.stats, "label_issues": found}

    def import_base(
        self,
        source: Source,
        holdout_fraction: float,
        seed: int,
        on_example: ImportProgressFn | None = None,
    ) -> DatasetInfo:
        """Import ``source`` (cleaned, as the door keeps it) as dataset version 1, with a
        stratified held-out split in which near-duplicates stay together."""
        cleaned, scrubbed = self._read(source, on_example)
        report = cleaned.report
        if self.door.scrubs:
            report["pii_scrubbed"] = dict(sorted(scrubbed.items()))
        source_skipped = list(getattr(source, "skipped", []))
        if source_skipped:
            report["unreadable"]["items"] = source_skipped + report["unreadable"]["items"]
            report["unreadable"]["count"] += len(source_skipped)
            report["total"] += len(source_skipped)
        kept = cleaned.kept
        if not kept:
            raise DataError(
                f"source {source.name!r} holds no readable {self.ctx.task.modality} input "
                f"({report['unreadable']['count']} unreadable)"
            )
        examples = [ex for ex, _, _ in kept]
        labels, strata = targets(
            examples, regression=self.ctx.task.is_regression, source=source.name
        )
        splits, note = split_by_group(
            [ex.split for ex in examples], cleaned.groups, strata, holdout_fraction, seed
        )
        if note is not None:  # too few distinct groups to hold some out
            report["near_duplicates"]["split"] = note
        preprocessing = self._preprocessing(cleaned, splits)
        users = {ex.user_id: self.identity.chain(ex.user_id) for ex in examples if ex.user_id}
        for given in users:
            check_user_id(given)
        with self.ctx.db.session() as s:
            for user in sorted(set(users.values())):
                ensure_user(s, user)
            self.ctx.blobs.put_many([ex.content for ex in examples])
            rows = [
                Example(
                    input_hash=digest,
                    label=ex.label,
                    value=ex.value,
                    split=sp,
                    origin="base",
                    user_id=users.get(ex.user_id) if ex.user_id else None,
                    source_path=ex.source_path,
                )
                for (ex, digest, _), sp in zip(kept, splits, strict=True)
            ]
            s.add_all(rows)
            s.flush()
            dv = repo.new_version(
                s,
                rows,
                task=self.ctx.task.name,
                parent=None,
                source=source.name,
                preprocessing=preprocessing,
                labels=labels,
                extra={"cleaning": report, "holdout_fraction": holdout_fraction, "seed": seed},
            )
            return repo.info(dv, self.ctx.task.name)

    def _read(
        self, source: Source, on_example: ImportProgressFn | None
    ) -> tuple[Cleaned, Counter[str]]:
        """The source's examples through the door, cleaned; what the door scrubbed."""
        raw: list[RawExample] = []
        scrubbed: Counter[str] = Counter()
        for i, ex in enumerate(source):
            if self.door.scrubs:
                content, found = self.door.scrub(ex.content)
                scrubbed.update(found)
                ex = replace(ex, content=content)
            raw.append(ex)
            if on_example is not None:
                on_example(i + 1)
        return clean(raw, self.ctx.codec), scrubbed

    def _preprocessing(self, cleaned: Cleaned, splits: list[str]) -> dict[str, Any]:
        """The native preprocessing the codec infers from the training rows (and, for
        regression, the target's mean and spread)."""
        kept = cleaned.kept
        train_probes = [p for (_, _, p), sp in zip(kept, splits, strict=True) if sp == TRAIN]
        if not train_probes:
            raise DataError("no example is left for training after the held-out draw")
        preprocessing = self.ctx.codec.infer(train_probes)
        if self.ctx.task.is_regression:
            y = np.array(
                [ex.value for (ex, _, _), sp in zip(kept, splits, strict=True) if sp == TRAIN],
                dtype=np.float64,
            )
            preprocessing["target_mean"] = float(y.mean())
            preprocessing["target_std"] = float(y.std()) or 1.0
        return preprocessing
