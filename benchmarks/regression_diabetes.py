"""Diabetes regression: flywheel's `mlp_regressor` against scikit-learn's Ridge, same split.

    .venv/bin/python benchmarks/regression_diabetes.py [--seeds 5]

Both arms see the same rows: the project's fixed held-out split (20%, stratified by
target quintile) is the test set; Ridge's alpha is chosen by cross-validation on the
training rows only. Figures are test MSE; the ratio is flywheel / Ridge (< 1 is better).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import RidgeCV

from flywheel import Project
from flywheel.data import DiabetesSource


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=5, help="training seeds for the MLP")
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        project = Project.init(
            Path(tmp) / "p",
            DiabetesSource(),
            task="regression",
            settings={
                "epochs": args.epochs,
                "patience": 30,
                "learning_rate": 1e-3,
                "weight_decay": 0.1,
                "dropout": 0.1,
                "batch_size": 32,
                "warm_start": False,
            },
        )
        # The same rows for both arms, decoded the way the model sees them.
        from flywheel.data import HOLDOUT, TRAIN

        train, test = (project.dataset_arrays(sp) for sp in (TRAIN, HOLDOUT))

        t = time.perf_counter()
        ridge = RidgeCV(alphas=np.logspace(-3, 3, 25)).fit(train.x, train.y)
        ridge_s = time.perf_counter() - t
        ridge_mse = float(np.mean((ridge.predict(test.x) - test.y) ** 2))

        mlp = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            result = project.train(project.train_config(seed=seed))
            mlp.append(
                (
                    result.decision.challenger_score,
                    time.perf_counter() - t,
                    result.model.metrics["epochs_run"],
                )
            )
        project.close()

    mses = np.array([m for m, _, _ in mlp])
    print(f"diabetes: {len(train)} train / {len(test)} test rows")
    print(f"{'arm':<28}{'test MSE':>12}{'ratio':>8}{'fit s':>8}")
    print(f"{'ridge (alpha by CV)':<28}{ridge_mse:>12.1f}{1.0:>8.3f}{ridge_s:>8.2f}")
    for seed, (m, secs, epochs) in enumerate(mlp):
        label = f"mlp_regressor seed {seed} ({epochs} ep)"
        print(f"{label:<28}{m:>12.1f}{m / ridge_mse:>8.3f}{secs:>8.2f}")
    print(f"{'mlp_regressor mean':<28}{mses.mean():>12.1f}{mses.mean() / ridge_mse:>8.3f}")
    print(
        json.dumps(
            {
                "benchmark": "regression_diabetes",
                "n_train": len(train),
                "n_test": len(test),
                "ridge_mse": round(ridge_mse, 2),
                "ridge_alpha": float(ridge.alpha_),
                "mlp_mse": [round(float(m), 2) for m in mses],
                "mlp_mse_mean": round(float(mses.mean()), 2),
                "ratio_mean": round(float(mses.mean() / ridge_mse), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
