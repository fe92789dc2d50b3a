"""Label issues (confident learning) on digits with planted label noise.

    .venv/bin/python benchmarks/label_issues.py [--flip 0.2] [--seed 0] [--epochs 30]

scikit-learn's digits (1,797 images, 8x8, scaled to [0, 1]), one fixed stratified 80/20
train/test split. A fraction ``--flip`` of the training labels is changed at random, each
to a different class. Out-of-fold probabilities (5 stratified folds) come from `seed_cnn`
trained by flywheel's `fit`; `find_label_issues` flags rows from them.

Reported, all in one run: precision and recall of the flagged rows against the truly
flipped ones, and test accuracy of `seed_cnn` trained on the noisy labels (the same-run
baseline), on the noisy labels with the flagged rows excluded, and on the clean labels
(the ceiling), each with its ratio against the baseline. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from flywheel.data import digits_arrays
from flywheel.feedback.label_issues import (
    find_label_issues,
    label_issue_weights,
    out_of_fold_probabilities,
    torch_fit_predict,
)
from flywheel.models import build_spec
from flywheel.training import TrainConfig

N_CLASSES = 10
FOLDS = 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flip", type=float, default=0.2, help="fraction of training labels flipped")
    ap.add_argument("--seed", type=int, default=0, help="flips, folds and training")
    ap.add_argument("--epochs", type=int, default=30, help="at most; early stopping may end it")
    args = ap.parse_args()
    if not 0 <= args.flip < 1:
        raise SystemExit("--flip must be in [0, 1)")
    torch.set_num_threads(1)
    started = time.perf_counter()

    images, labels = digits_arrays()
    x = (images[:, None].astype(np.float32) / 255.0).astype(np.float32)
    tr, te = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )
    x_train, y_train, x_test, y_test = x[tr], labels[tr], x[te], labels[te]

    rng = np.random.default_rng(args.seed)
    flipped = np.sort(rng.choice(len(tr), round(len(tr) * args.flip), replace=False))
    noisy = y_train.copy()
    noisy[flipped] = (y_train[flipped] + rng.integers(1, N_CLASSES, len(flipped))) % N_CLASSES

    spec = build_spec(
        "seed_cnn",
        task="image-classification",
        native={"kind": "image", "mode": "L", "height": 8, "width": 8},
        labels=tuple(str(i) for i in range(N_CLASSES)),
        options={"image_size": 8},
    )
    config = TrainConfig(epochs=args.epochs, batch_size=32, seed=args.seed, image_size=8)
    fit_predict = torch_fit_predict(spec, config)
    print(
        f"digits: {len(tr)} train ({len(flipped)} labels flipped, {args.flip:.0%}), "
        f"{len(te)} test; seed_cnn {spec.input_shape}, at most {args.epochs} epochs "
        f"(patience {config.patience}), {FOLDS} folds, seed {args.seed}"
    )

    t = time.perf_counter()
    probs = out_of_fold_probabilities(
        x_train, noisy, N_CLASSES, fit_predict, folds=FOLDS, seed=args.seed
    )
    issues = find_label_issues(noisy, probs)
    find_s = time.perf_counter() - t
    truly = set(flipped.tolist())
    found = set(issues.indices.tolist())
    tp = len(found & truly)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(truly) if truly else 1.0
    hits = np.isin(issues.indices, flipped)
    suggested_ok = (
        float((issues.suggested[hits] == y_train[issues.indices[hits]]).mean())
        if hits.any()
        else 1.0
    )

    def accuracy(x_fit: np.ndarray, y_fit: np.ndarray) -> float:
        proba = fit_predict(x_fit, y_fit, x_test)
        return float((proba.argmax(1) == y_test).mean())

    keep = label_issue_weights(len(tr), issues, mode="exclude") > 0
    t = time.perf_counter()
    arms = {
        "noisy labels (baseline)": (accuracy(x_train, noisy), len(tr)),
        "noisy, flagged rows excluded": (accuracy(x_train[keep], noisy[keep]), int(keep.sum())),
        "clean labels (ceiling)": (accuracy(x_train, y_train), len(tr)),
    }
    train_s = time.perf_counter() - t
    base = arms["noisy labels (baseline)"][0]

    print(
        f"\nflagged {len(found)} rows in {find_s:.0f}s: {tp} truly flipped; "
        f"precision {precision:.3f}, recall {recall:.3f}; suggested label right for "
        f"{suggested_ok:.1%} of the true hits; estimated noise rate "
        f"{issues.noise_rate:.3f} (actual {len(flipped) / len(tr):.3f})\n"
    )
    print("| training set | rows | test accuracy | vs noisy |")
    print("| --- | ---: | ---: | ---: |")
    for name, (acc, rows) in arms.items():
        print(f"| {name} | {rows} | {acc:.4f} | {acc / base:.3f} |")
    total_s = time.perf_counter() - started
    print(f"\n{total_s:.0f}s in all ({train_s:.0f}s for the three final models)")

    result = {
        "benchmark": "label_issues_digits",
        "flip": args.flip,
        "seed": args.seed,
        "epochs": args.epochs,
        "folds": FOLDS,
        "train_rows": len(tr),
        "test_rows": len(te),
        "flipped": len(flipped),
        "flagged": len(found),
        "true_positives": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "suggested_label_accuracy": round(suggested_ok, 4),
        "estimated_noise_rate": round(issues.noise_rate, 4),
        "accuracy_noisy": round(arms["noisy labels (baseline)"][0], 4),
        "accuracy_excluded": round(arms["noisy, flagged rows excluded"][0], 4),
        "accuracy_clean": round(arms["clean labels (ceiling)"][0], 4),
        "excluded_vs_noisy": round(arms["noisy, flagged rows excluded"][0] / base, 4),
        "clean_vs_noisy": round(arms["clean labels (ceiling)"][0] / base, 4),
        "seconds": round(total_s, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
