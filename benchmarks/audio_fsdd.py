"""Spoken digits (FSDD): ``lstm_audio`` against a logistic regression on mean log-mel features.

Two figures, each on recordings no training saw:

* held-out recordings: a stratified 20% of all five speakers' recordings (by digit and
  speaker, split seed fixed at 0);
* held-out speaker: train on george, jackson, lucas and nicolas, test on theo.

The baseline, run on the same features in the same run, is scikit-learn's
LogisticRegression on the time-averaged log-mel features; each LSTM figure is also
printed as a ratio to it. Run it from the repository root::

    .venv/bin/python benchmarks/audio_fsdd.py [--epochs 30] [--seed 0] [--augment]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flywheel.data import Arrays
from flywheel.data.audio import AudioCodec, AudioFolderSource, audio_shape
from flywheel.models import ModelSpec, create_model, default_hparams
from flywheel.training import TrainConfig, fit, predict_proba
from flywheel.training.augment import audio_augment

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fsdd" / "recordings"
HELD_OUT_SPEAKER = "theo"
SPLIT_SEED = 0


def load_fsdd(
    folder: Path,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, dict[str, Any]]:
    """(log-mel features, label indices, labels, speaker per recording, decode params)."""
    examples = list(AudioFolderSource(folder))
    codec = AudioCodec()
    params = codec.infer([codec.probe(ex.content) for ex in examples])
    x = codec.decode_batch([ex.content for ex in examples], params)
    labels = sorted({str(ex.label) for ex in examples}, key=lambda s: (len(s), s))
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[str(ex.label)] for ex in examples], dtype=np.int64)
    speakers = np.array([str(ex.user_id) for ex in examples])
    return x, y, labels, speakers, params


def lstm_spec(labels: list[str], params: dict[str, Any], dropout: float) -> ModelSpec:
    """``lstm_audio`` at its default size for these decode parameters."""
    shape = audio_shape(params)
    return ModelSpec(
        arch="lstm_audio",
        task="audio-classification",
        input_shape=shape,
        labels=tuple(labels),
        hparams={**default_hparams("lstm_audio", shape), "dropout": dropout},
        preprocessing=params,
    )


def _baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_train.mean(axis=1), y_train)
    predicted: np.ndarray = clf.predict(x_test.mean(axis=1))
    return predicted


def _lstm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    labels: list[str],
    params: dict[str, Any],
    config: TrainConfig,
    augment: bool,
) -> tuple[np.ndarray, dict[str, float]]:
    spec = lstm_spec(labels, params, config.dropout)
    torch.manual_seed(config.seed)
    model = create_model(spec)
    start = time.perf_counter()
    result = fit(
        model,
        Arrays(x=x_train, y=y_train, labels=labels),
        config,
        augment=audio_augment() if augment else None,
    )
    seconds = time.perf_counter() - start
    predicted = predict_proba(model, x_test).argmax(axis=1)
    return predicted, {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / max(1, result.epochs_run), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and its training")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--augment", action="store_true", help="time shift and noise on batches")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; on a shared 2-core machine one thread is several times faster "
        "than two competing with other processes",
    )
    parser.add_argument("--data", type=Path, default=FSDD)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    x, y, labels, users, params = load_fsdd(args.data)
    decode_seconds = time.perf_counter() - t0
    print(
        f"{len(y)} recordings, {len(set(users))} speakers, {len(labels)} classes; "
        f"features {x.shape[1:]} ({params['sample_rate']} Hz, {params['seconds']} s, "
        f"{params['n_mels']} mels, hop {params['hop_length']}); "
        f"read and decoded in {decode_seconds:.1f} s"
    )

    from sklearn.model_selection import train_test_split

    strata = np.array([f"{lab}/{u}" for lab, u in zip(y, users, strict=True)])
    tr, te = train_test_split(
        np.arange(len(y)), test_size=0.2, random_state=SPLIT_SEED, stratify=strata
    )
    splits = {
        "recordings": (np.sort(tr), np.sort(te)),
        "speaker": (
            np.flatnonzero(users != HELD_OUT_SPEAKER),
            np.flatnonzero(users == HELD_OUT_SPEAKER),
        ),
    }
    config = TrainConfig(
        arch="lstm_audio",
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        patience=args.patience,
        seed=args.seed,
        lr_schedule="cosine",
        augment=args.augment,
    )

    figures: dict[str, Any] = {}
    rows = []
    for name, (train_idx, test_idx) in splits.items():
        base = _baseline(x[train_idx], y[train_idx], x[test_idx])
        base_acc = float((base == y[test_idx]).mean())
        pred, info = _lstm(
            x[train_idx], y[train_idx], x[test_idx], labels, params, config, args.augment
        )
        acc = float((pred == y[test_idx]).mean())
        ratio = acc / base_acc if base_acc > 0 else float("nan")
        rows.append((name, len(train_idx), len(test_idx), acc, base_acc, ratio, info))
        figures[name] = {
            "lstm_accuracy": round(acc, 4),
            "baseline_accuracy": round(base_acc, 4),
            "ratio": round(ratio, 3),
            "train": len(train_idx),
            "test": len(test_idx),
            **info,
        }
        print(
            f"  {name}: lstm {acc:.4f}, baseline {base_acc:.4f} "
            f"({info['epochs_run']} epochs, {info['seconds_per_epoch']} s/epoch)",
            flush=True,
        )

    total = time.perf_counter() - t0
    print()
    header = (
        f"{'held out':<12}{'train':>7}{'test':>6}{'lstm':>9}{'logreg':>9}{'ratio':>8}"
        f"{'epochs':>8}{'best':>6}{'s/epoch':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, n_tr, n_te, acc, base_acc, ratio, info in rows:
        print(
            f"{name:<12}{n_tr:>7}{n_te:>6}{acc:>9.4f}{base_acc:>9.4f}{ratio:>8.3f}"
            f"{info['epochs_run']:>8}{info['best_epoch']:>6}{info['seconds_per_epoch']:>9.2f}"
        )
    print(f"total {total:.1f} s (decode {decode_seconds:.1f} s)")
    summary = {
        "benchmark": "audio_fsdd",
        "arch": "lstm_audio",
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "augment": args.augment,
        "held_out_speaker": HELD_OUT_SPEAKER,
        "features": list(x.shape[1:]),
        "decode_seconds": round(decode_seconds, 1),
        "total_seconds": round(total, 1),
        **figures,
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
