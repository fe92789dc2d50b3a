"""A stream of predictions and answers over time, with the camera getting worse part-way,
under four retrain policies; and a control stream without a shift for false alarms.

    .venv/bin/python benchmarks/stream.py [--seed 0] [--json results.json]  # ~8 min

For each arm the 1,797 digits are shuffled the same way: 600 make the project (300
trained on, 300 held out: the drift reference), the next 1,100 are the stream, in
windows of ``--window`` (100) calls. From window ``--pre`` (5) on, every image comes
from a worse camera: contrast x0.7 and Gaussian noise (sigma 1.5 of 16). After each
window, 40% of its calls are answered with their true labels, each by two of ten
users. Then the arm's policy — the server's own ``flywheel.jobs.policy.due`` on a
clock of one hour per window — may retrain (curation, the gate, promotion):

- ``never``: the first model serves the whole stream;
- ``interval``: every 3 windows (``retrain_interval_s``), with new answers;
- ``every_n``: every 160 new answers (``retrain_min_feedback``: two windows' worth);
- ``drift``: after a drift alarm, once 80 new answers arrived (``retrain_on_drift``);
- ``drift+n``: both of the last two.

Reported per arm: the accuracy on the live stream (every call's true label) averaged
over windows, before and after the shift; retrains per 1,000 answers; windows from the
shift to the first alarm; the label-free estimate's error before the shift, against the
accuracy the answers showed and against the window's true accuracy, and (``floor``) the
error of a perfect estimate — the window's true accuracy — against the answers' (their
own sampling error, under which no estimate can go). The control stream:
``--control`` (100) windows drawn with replacement from the images outside the project,
no shift, no retrain, 40% of each window's calls answered: its alarms per 100 windows
(target <= 1) and the label-free estimate's error over those 100 windows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOUR = 3600.0
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def worse_camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = image.astype(np.float64) * 0.7 + rng.normal(0.0, 1.5, image.shape)
    return np.clip(noisy, 0, 16).astype(image.dtype)


def policy_for(arm: str) -> Any:
    from flywheel.jobs.policy import Policy

    return {
        "never": Policy(cooldown_s=0),
        "interval": Policy(interval_s=3 * HOUR, cooldown_s=0),
        "every_n": Policy(min_feedback=160, cooldown_s=0),
        "drift": Policy(on_drift=True, drift_min_feedback=80, cooldown_s=0),
        "drift+n": Policy(min_feedback=160, on_drift=True, drift_min_feedback=80, cooldown_s=0),
    }[arm]


def new_project(root: Path, order: np.ndarray, args: argparse.Namespace) -> Any:
    from flywheel import Project
    from flywheel.data import DigitsSource

    settings = {"drift_window": args.window, "epochs": args.epochs}
    project = Project.init(
        root, DigitsSource(order[:600].tolist()), holdout_fraction=0.5, seed=args.seed,
        settings=settings,
    )  # fmt: skip
    project.train()
    return project


def run_arm(arm: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from flywheel.data import digits_arrays, encode_png
    from flywheel.jobs.policy import PolicyState, due

    images, labels = digits_arrays()
    order = np.random.default_rng(args.seed).permutation(len(labels))
    rng = np.random.default_rng(args.seed + 1)
    project = new_project(root / arm, order, args)
    policy = policy_for(arm)
    stream = order[600 : 600 + args.window * (args.pre + args.post)]
    last_retrain, new_answers, answers, alarms_since = T0, 0, 0, 0
    windows: list[dict[str, Any]] = []
    retrains: list[dict[str, Any]] = []
    for k in range(args.pre + args.post):
        shifted = k >= args.pre
        calls = []
        for i in stream[k * args.window : (k + 1) * args.window]:
            img = worse_camera(images[i], rng) if shifted else images[i]
            r = project.predict(encode_png(img))
            calls.append((r.prediction_id, str(r.label), str(labels[i])))
        m = project.monitoring(1, update=True)
        assert m["closed"], f"window {k} did not close"
        answered = rng.permutation(len(calls))[: int(0.4 * len(calls))]
        for j in answered:
            pid, _, truth = calls[j]
            for user in rng.choice(10, size=2, replace=False):
                project.record_feedback(pid, label=truth, user_id=f"user-{user}")
                answers += 1
                new_answers += 1
        w = project.monitoring(1)["windows"][-1]
        alarms_since += int(w["alarm"])
        windows.append(
            {
                "window": k, "shifted": shifted, "version": w["model_version"],
                "accuracy": float(np.mean([p == t for _, p, t in calls])),
                "alarm": w["alarm"], "drift_score": w["drift_score"],
                "estimated": w["estimated_accuracy"], "observed": w["observed_accuracy"],
                "atc": (w["estimates"] or {}).get("atc"),
                "answered": w["answered"],
            }
        )  # fmt: skip
        now = T0 + timedelta(seconds=HOUR * (k + 1))
        state = PolicyState(new_answers, last_retrain, False, now, drift_alarms=alarms_since)
        trigger, _ = due(policy, state)
        if trigger is None:
            continue
        started = time.perf_counter()
        out = project.retrain()
        res = out.train
        retrains.append(
            {
                "after_window": k, "trigger": trigger,
                "promoted": None if res is None else res.promoted,
                "version": None if res is None else res.model.version,
                "verdict": None if res is None else res.decision.verdict,
                "skipped": out.skipped_reason, "seconds": round(time.perf_counter() - started, 1),
            }
        )  # fmt: skip
        last_retrain, new_answers, alarms_since = now, 0, 0
    project.close()
    return summarise(arm, windows, retrains, answers, args)


def summarise(
    arm: str,
    windows: list[dict[str, Any]],
    retrains: list[dict[str, Any]],
    answers: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    pre = [w for w in windows if not w["shifted"]]
    post = [w for w in windows if w["shifted"]]
    first_alarm = next((w["window"] for w in post if w["alarm"]), None)
    err_obs = [abs(w["estimated"] - w["observed"]) for w in pre if w["observed"] is not None]
    err_true = [abs(w["estimated"] - w["accuracy"]) for w in pre]
    # what a perfect estimate (the window's true accuracy) would score against the answers
    floor = [abs(w["accuracy"] - w["observed"]) for w in pre if w["observed"] is not None]
    atc_true = [abs(w["atc"] - w["accuracy"]) for w in pre if w["atc"] is not None]
    return {
        "arm": arm,
        "accuracy": float(np.mean([w["accuracy"] for w in windows])),
        "accuracy_before": float(np.mean([w["accuracy"] for w in pre])),
        "accuracy_after": float(np.mean([w["accuracy"] for w in post])),
        "retrains": len(retrains),
        "promoted": sum(bool(r["promoted"]) for r in retrains),
        "answers": answers,
        "retrains_per_1000_answers": 1000 * len(retrains) / max(answers, 1),
        "windows_to_alarm": None if first_alarm is None else first_alarm - args.pre,
        "false_alarms_before_shift": sum(w["alarm"] for w in pre),
        "estimate_mae_vs_observed": float(np.mean(err_obs)) if err_obs else None,
        "estimate_mae_vs_true": float(np.mean(err_true)),
        "true_accuracy_mae_vs_observed": float(np.mean(floor)) if floor else None,
        "atc_mae_vs_true": float(np.mean(atc_true)) if atc_true else None,
        "windows": windows,
        "retrain_log": retrains,
    }


def control(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from flywheel.data import digits_arrays, encode_png

    images, labels = digits_arrays()
    order = np.random.default_rng(args.seed).permutation(len(labels))
    rng = np.random.default_rng(args.seed + 2)
    project = new_project(root / "control", order, args)
    pool = order[600:]
    alarms, errors, atc_errors, vs_observed, floor = [], [], [], [], []
    for k in range(args.control):
        truth_right, calls = [], []
        for i in rng.choice(pool, size=args.window, replace=True):
            r = project.predict(encode_png(images[i]))
            truth_right.append(str(r.label) == str(labels[i]))
            calls.append((r.prediction_id, str(labels[i])))
        (w,) = project.monitoring(1, update=True)["windows"]
        # 40% of the calls answered (one user each): the observed accuracy, and the
        # calibration of the windows after
        for j in rng.permutation(len(calls))[: int(0.4 * len(calls))]:
            project.record_feedback(calls[j][0], label=calls[j][1], user_id=f"user-{k % 10}")
        (w,) = project.monitoring(1)["windows"]
        true = float(np.mean(truth_right))
        alarms.append(bool(w["alarm"]))
        errors.append(abs(w["estimated_accuracy"] - true))
        vs_observed.append(abs(w["estimated_accuracy"] - w["observed_accuracy"]))
        floor.append(abs(true - w["observed_accuracy"]))
        if (w["estimates"] or {}).get("atc") is not None:
            atc_errors.append(abs(w["estimates"]["atc"] - true))
    project.close()
    return {
        "windows": args.control,
        "alarms": int(sum(alarms)),
        "alarms_per_100_windows": 100 * sum(alarms) / args.control,
        "estimate_mae_vs_true": float(np.mean(errors)),
        "estimate_mae_vs_observed": float(np.mean(vs_observed)),
        "true_accuracy_mae_vs_observed": float(np.mean(floor)),
        "atc_mae_vs_true": float(np.mean(atc_errors)) if atc_errors else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--pre", type=int, default=5, help="windows before the shift")
    ap.add_argument("--post", type=int, default=6, help="windows after the shift")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--control", type=int, default=100, help="windows of the control stream")
    ap.add_argument("--arms", default="never,interval,every_n,drift,drift+n")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flywheel-stream-") as tmp:
        arms = [run_arm(a, Path(tmp), args) for a in args.arms.split(",")]
        ctrl = control(Path(tmp), args) if args.control else None
    head = ("arm", "acc", "before", "after", "retrains", "/1k ans", "to alarm", "MAE obs",
            "MAE true", "ATC true", "floor")  # fmt: skip
    print(f"{head[0]:<10} " + " ".join(f"{h:>8}" for h in head[1:]))
    for a in arms:
        mae_obs = a["estimate_mae_vs_observed"]
        print(
            f"{a['arm']:<10} {a['accuracy']:>8.3f} {a['accuracy_before']:>8.3f} "
            f"{a['accuracy_after']:>8.3f} {a['retrains']:>4} ({a['promoted']}) "
            f"{a['retrains_per_1000_answers']:>7.2f} {a['windows_to_alarm']!s:>8} "
            f"{'-' if mae_obs is None else f'{mae_obs:.3f}':>8} "
            f"{a['estimate_mae_vs_true']:>8.3f} {a['atc_mae_vs_true'] or float('nan'):>8.3f} "
            f"{a['true_accuracy_mae_vs_observed'] or float('nan'):>8.3f}"
        )
    if ctrl:
        print(
            f"control: {ctrl['alarms']} alarms in {ctrl['windows']} windows without a shift "
            f"({ctrl['alarms_per_100_windows']:.1f} per 100); label-free estimate MAE "
            f"{ctrl['estimate_mae_vs_true']:.3f} (ATC "
            f"{ctrl['atc_mae_vs_true'] or float('nan'):.3f}) against the windows' true accuracy, "
            f"{ctrl['estimate_mae_vs_observed']:.3f} against the answers' (floor: "
            f"{ctrl['true_accuracy_mae_vs_observed']:.3f})"
        )
    print(f"{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"arms": arms, "control": ctrl}, indent=2))


if __name__ == "__main__":
    main()
