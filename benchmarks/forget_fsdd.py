"""Forget a speaker: the spoken digits with one user per speaker, then ``forget theo``.

    .venv/bin/python benchmarks/forget_fsdd.py [--epochs 15] [--keep DIR]

1. ``flywheel init`` on ``../shared/datasets/fsdd/recordings`` (file names give each
   recording's speaker, stored as a keyed hash); v1 trained on every speaker.
2. theo also uses the served model: 40 predictions on new takes of his words (his
   recordings at 0.8x the volume) with his id, and feedback on each; a retrain (v2,
   warm-started from v1) learns from them.
3. The baseline, measured in the same run on a copy of the project: a full retrain
   from scratch on every row (what erasure costs without flywheel's bookkeeping).
4. ``project.forget("theo")``: the erasure and the retrain without him, timed
   together, as a ratio to the baseline.

Then it checks, and prints, that no cell of any table holds theo's pseudonym or the
hash of any of his inputs, that none of his inputs is left in the blob folder, that
every version trained on his rows (v1, and v2 warm-started from it) is listed and
out of service, and that the new production model's dataset has no row of his.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy import select

from flywheel import Project
from flywheel.data.audio import AudioFolderSource
from flywheel.store.schema import DatasetVersionExample, Example, ModelVersion, Prediction
from flywheel.store.search import search_store

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fsdd" / "recordings"
FORGET = "theo"


def quieter(wav: bytes) -> bytes:
    import io

    import soundfile

    data, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    out = io.BytesIO()
    soundfile.write(out, data * 0.8, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--keep", type=Path, default=None, help="Leave the project here.")
    ap.add_argument("--data", type=Path, default=FSDD)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.data.is_dir():
        raise SystemExit(f"FSDD not found at {args.data}")
    tmp = Path(tempfile.mkdtemp(prefix="fw-forget-"))
    root = args.keep or tmp / "fsdd"
    settings = {"epochs": args.epochs, "batch_size": 64, "learning_rate": 3e-3, "patience": 5}

    t = time.perf_counter()
    project = Project.init(
        root, AudioFolderSource(args.data), task="audio-classification", settings=settings
    )
    v1 = project.train()
    print(
        f"v1: held-out accuracy {v1.decision.challenger_score:.4f} on "
        f"{v1.model.metrics['n']} rows; {v1.model.metrics['n_train']} training rows; "
        f"{time.perf_counter() - t:.0f} s with the import"
    )
    theo = project.pseudonym(FORGET)
    assert theo is not None
    with project.db.session() as s:
        his = s.execute(
            select(Example.input_hash, Example.label).where(Example.user_id == theo)
        ).all()
    for digest, label in his[:40]:
        # A new recording of the same word (his, a little quieter): a new input.
        p = project.predict(quieter(project.blobs.get(digest)), user_id=FORGET)
        project.record_feedback(p.prediction_id, label=label, user_id=FORGET)
    v2 = project.retrain()
    assert v2.train is not None
    if not v2.train.promoted:
        project.promote(v2.train.model.version)
    with project.db.session() as s:
        hashes = {
            h for (h,) in s.execute(select(Example.input_hash).where(Example.user_id == theo))
        }
        hashes |= {
            h for (h,) in s.execute(select(Prediction.input_hash).where(Prediction.user_id == theo))
        }
    print(f"theo: {len(his)} recordings imported, 40 predictions with feedback; v2 retrained")

    # Baseline: a full retrain from scratch, on a copy, measured in this run.
    copy_root = tmp / "baseline"
    shutil.copytree(root, copy_root)
    baseline = Project.open(copy_root)
    t = time.perf_counter()
    full = baseline.train(baseline.train_config(warm_start=False))
    full_seconds = time.perf_counter() - t
    baseline.close()

    t = time.perf_counter()
    out = project.forget(FORGET)
    forget_seconds = time.perf_counter() - t

    left_id = search_store(project.db.engine, {theo})
    left_hash = search_store(project.db.engine, hashes)
    blob_names = {f"{p.parent.name}{p.name}" for p in project.blobs.root.rglob("*") if p.is_file()}
    left_blobs = len(hashes & blob_names)
    prod = project.production_version()
    with project.db.session() as s:
        mv = s.get(ModelVersion, prod)
        assert mv is not None
        prod_rows = s.scalar(
            select(Example.id)
            .join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id)
            .where(
                DatasetVersionExample.dataset_version_id == mv.dataset_version_id,
                Example.user_id == theo,
            )
            .limit(1)
        )
        withdrawn = [
            v
            for v in out["versions_affected"]
            if (m := s.get(ModelVersion, v)) is not None and m.withdrawn_at is not None
        ]
    new_acc = project.version_info(prod).metrics["accuracy"] if prod else None
    figures = {
        "erased": out["erased"],
        "blobs_deleted": out["blobs_deleted"],
        "versions_affected": out["versions_affected"],
        "versions_withdrawn": withdrawn,
        "production_before": out["production_before"],
        "production_after": prod,
        "new_model_trained_on": mv.dataset_version_id,
        "new_model_rows_of_theo": 0 if prod_rows is None else 1,
        "new_model_accuracy": new_acc,
        "cells_with_theo_id": left_id,
        "cells_with_theo_input_hashes": left_hash,
        "blob_files_of_theo_left": left_blobs,
        "full_retrain_seconds": round(full_seconds, 1),
        "full_retrain_accuracy": round(full.decision.challenger_score, 4),
        "forget_and_retrain_seconds": round(forget_seconds, 1),
        "ratio_to_full_retrain": round(forget_seconds / full_seconds, 3),
        "gate": (out.get("retrain") or {}).get("gate"),
        "withdrawn_production_on_remaining_holdout": out["withdrawn_production_score"],
        "accuracy_change_vs_withdrawn": (out.get("retrain") or {}).get(
            "accuracy_change_vs_withdrawn"
        ),
    }
    for k, v in figures.items():
        print(f"  {k}: {v}")
    print(json.dumps({"benchmark": "forget_fsdd", **figures}, default=str))
    project.close()
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
