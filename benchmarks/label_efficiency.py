"""Label efficiency of the review queue: held-out accuracy against feedback labels spent.

    .venv/bin/python benchmarks/label_efficiency.py                      # digits
    .venv/bin/python benchmarks/label_efficiency.py --data cifar --rounds 6 --batch 100

Drives the real server over HTTP (loopback). Every arm starts from the same project: a
small labelled seed set and the same held-out split. Each round, a simulated user
sends every still-unlabelled pool image to `POST /v1/predict` (the model's current
view), takes `--batch` items from `GET /v1/review-queue?strategy=S` (golden probes
off), answers them with the true label (`POST /v1/feedback`), and `POST /v1/retrain`
folds them in. Arms: `random` (the same-run baseline), `margin`, `entropy`; same seeds.
The figure of merit: how many labels the active arm needs to reach the random arm's
final accuracy (target: at most half of random's).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from flywheel import Project
from flywheel.data import (
    HOLDOUT,
    TRAIN,
    ImageFolderSource,
    ListSource,
    RawExample,
    digits_arrays,
    encode_png,
)
from flywheel.serving import BackgroundServer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def load(name: str) -> tuple[list[bytes], np.ndarray, dict[str, Any]]:
    """Encoded images, their labels, and the project settings for the data set."""
    if name == "digits":
        images, labels = digits_arrays()
        return [encode_png(im) for im in images], labels.astype(str), {"image_size": 8}
    source = ImageFolderSource(DATA / "cifar10-mini" / "train")
    examples = list(source)
    return (
        [e.content for e in examples],
        np.array([str(e.label) for e in examples]),
        {"arch": "cnn32", "image_size": 32},
    )


def wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("succeeded", "failed"):
            if job["status"] == "failed":
                raise SystemExit(f"retrain failed: {job['error']}")
            return job
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} did not finish")


def run_arm(
    strategy: str,
    contents: list[bytes],
    labels: np.ndarray,
    split: dict[str, np.ndarray],
    settings: dict[str, Any],
    rounds: int,
    batch: int,
    root: Path,
) -> list[tuple[int, float]]:
    base = [RawExample(contents[i], labels[i], split=HOLDOUT) for i in split["holdout"]]
    base += [RawExample(contents[i], labels[i], split=TRAIN) for i in split["seed"]]
    project = Project.init(root, ListSource("benchmark", base), settings=settings)
    first = project.train()
    curve = [(0, first.decision.challenger_score)]
    key, _ = project.create_key(["admin"])
    truth = {i: labels[i] for i in split["pool"]}
    unlabelled = set(int(i) for i in split["pool"])
    by_prediction: dict[str, int] = {}
    spent = 0
    with (
        BackgroundServer(project) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as c,
    ):
        for _ in range(rounds):
            for i in sorted(unlabelled):
                files = {"file": (f"{i}.png", contents[i], "image/png")}
                r = c.post("/v1/predict", files=files).raise_for_status().json()
                by_prediction[r["prediction_id"]] = i
            queue = (
                c.get("/v1/review-queue", params={"limit": batch, "strategy": strategy})
                .raise_for_status()
                .json()["items"]
            )
            for item in queue:
                i = by_prediction[item["prediction_id"]]
                body = {"prediction_id": item["prediction_id"], "label": str(truth[i])}
                c.post("/v1/feedback", json=body, headers={"X-User-Id": "annotator"})
                unlabelled.discard(i)
            spent += len(queue)
            job_id = c.post("/v1/retrain", json={}).raise_for_status().json()["job_id"]
            result = wait(c, job_id)["result"]
            # The production model's accuracy after the round (the champion's if refused).
            acc = result["accuracy"] if result["promoted"] else result["champion_accuracy"]
            curve.append((spent, float(acc)))
    project.close()
    return curve


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target - 1e-9), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", choices=("digits", "cifar"), default="digits")
    ap.add_argument("--seed-labels", type=int, default=50)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--strategies", default="random,margin,entropy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    contents, labels, extra = load(args.data)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(labels))
    n_holdout = len(labels) // 5
    split = {
        "holdout": order[:n_holdout],
        "seed": order[n_holdout : n_holdout + args.seed_labels],
        "pool": order[n_holdout + args.seed_labels :],
    }
    settings = {
        "epochs": args.epochs,
        "patience": args.patience,
        "seed": args.seed,
        "golden_share": 0.0,  # measure acquisition alone
        "gate_class_margin": 1.0,  # follow the curve, not the gate
        "gate_margin": 1.0,
        **extra,
    }
    started = time.perf_counter()
    curves: dict[str, list[tuple[int, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            curves[strategy] = run_arm(
                strategy,
                contents,
                labels,
                split,
                settings,
                args.rounds,
                args.batch,
                Path(tmp) / strategy,
            )
            print(
                f"{strategy:>8}: " + "  ".join(f"{n}:{a:.3f}" for n, a in curves[strategy]),
                flush=True,
            )
    target = curves["random"][-1][1]
    random_spent = curves["random"][-1][0]
    print(
        f"\n{args.data}: {args.seed_labels} seed labels, {len(split['holdout'])} held out, "
        f"batches of {args.batch}; random's final accuracy {target:.4f} at {random_spent} labels"
    )
    print(f"{'strategy':<10}{'final acc':>10}{'labels to reach random':>24}{'share':>8}")
    summary = {}
    for strategy, curve in curves.items():
        need = labels_to_reach(curve, target)
        share = None if need is None else need / random_spent
        summary[strategy] = {"curve": curve, "labels_to_reach_random": need, "share": share}
        print(
            f"{strategy:<10}{curve[-1][1]:>10.4f}{need!s:>24}"
            f"{'-' if share is None else f'{share:.2f}':>8}"
        )
    print(f"({time.perf_counter() - started:.0f} s)")
    print(
        json.dumps(
            {
                "benchmark": "label_efficiency",
                "data": args.data,
                "batch": args.batch,
                "seed_labels": args.seed_labels,
                "random_final": target,
                "arms": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
