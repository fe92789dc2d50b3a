"""The small start: a digits project from 100 labelled images, then rounds of 600 honest
answers, each followed by a retrain.

    .venv/bin/python benchmarks/small_start.py [--seeds 0,...,9] [--json results.json]  # ~4 min

For each seed the 1,797 digits are shuffled: the first 100 make the project (20 held out,
two per class), the next 2 x 600 are predicted for 20 users (30 each per round) and every
prediction is answered with its true label, the other 497 stay outside the project.
After each round one retrain (curation, warm start, the gate). Reported per seed and
round: the gate's verdict and interval,
whether it promoted the challenger, what the previous gate would have done (a point
comparison of held-out accuracy, and any class losing more than 0.1 of its recall on
one row or more), and champion and challenger accuracy on the 497 outside images — the
baseline, measured in the same run. The second round is the hard case: a good champion,
20 held-out rows, where one image decides a class.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def old_gate(decision: dict[str, Any]) -> bool:
    """The gate before issue 14: points, and one row enough to fail a class."""
    worse = decision["challenger_score"] < decision["champion_score"] - decision["margin"] - 1e-9
    drops = decision["checks"].get("per_class", {}).get("recall_drop", {})
    return not worse and all(d <= 0.1 + 1e-9 for d in drops.values())


def one_seed(seed: int, root: Path, rounds: int = 2) -> list[dict[str, Any]]:
    import numpy as np

    from flywheel import Project
    from flywheel.data import DigitsSource, digits_arrays, encode_png

    images, labels = digits_arrays()
    order = np.random.default_rng(seed).permutation(len(labels))
    start, outside = order[:100], order[100 + 600 * rounds :]
    project = Project.init(root / f"s{seed}", DigitsSource(start.tolist()), seed=seed)
    project.train()
    out = DigitsSource(outside.tolist())
    rows = []
    for r in range(rounds):
        champion = project.production_version()
        for k, i in enumerate(order[100 + 600 * r : 100 + 600 * (r + 1)]):
            user = f"user-{k % 20}"
            result = project.predict(encode_png(images[i]), user_id=user)
            project.record_feedback(result.prediction_id, label=str(labels[i]), user_id=user)
        retrained = project.retrain()
        assert retrained.train is not None, retrained.skipped_reason
        d = retrained.train.decision
        rows.append(
            {
                "seed": seed,
                "round": r + 1,
                "answers": 600 * (r + 1),
                "held_out": d.n,
                "champion_held_out": d.champion_score,
                "challenger_held_out": d.challenger_score,
                "verdict": d.verdict,
                "interval": d.interval,
                "per_class_passed": d.checks.get("per_class", {}).get("passed"),
                "promoted": retrained.train.promoted,
                "old_gate_promoted": old_gate(d.to_json()),
                "champion_outside": project.evaluate(champion, source=out)["accuracy"],
                "challenger_outside": project.evaluate(retrained.train.model.version, source=out)[
                    "accuracy"
                ],
                "reason": d.reason,
            }
        )
    project.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="flywheel-small-") as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            for r in one_seed(seed, Path(tmp)):
                rows.append(r)
                print(
                    f"seed {seed} round {r['round']}: held-out {r['champion_held_out']:.2f} -> "
                    f"{r['challenger_held_out']:.2f} ({r['verdict']}); outside "
                    f"{r['champion_outside']:.4f} -> {r['challenger_outside']:.4f}; promoted "
                    f"{r['promoted']} (old gate {r['old_gate_promoted']})",
                    flush=True,
                )
    print()
    print(
        "| seed | answers | held out | champion / challenger held out | verdict, 95% interval "
        "| promoted | old gate | champion / challenger outside (497) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["interval"]
        print(
            f"| {r['seed']} | {r['answers']} | {r['held_out']} | {r['champion_held_out']:.2f} / "
            f"{r['challenger_held_out']:.2f} | {r['verdict']} [{lo:+.3f}, {hi:+.3f}] | "
            f"{'yes' if r['promoted'] else 'no'} | {'yes' if r['old_gate_promoted'] else 'no'} "
            f"| {r['champion_outside']:.4f} / {r['challenger_outside']:.4f} |"
        )
    for rnd in sorted({r["round"] for r in rows}):
        sub = [r for r in rows if r["round"] == rnd]
        better = [r for r in sub if r["challenger_outside"] > r["champion_outside"]]
        gain = sum(r["challenger_outside"] - r["champion_outside"] for r in sub) / len(sub)
        print(
            f"round {rnd}: the challenger is better outside in {len(better)} of {len(sub)} "
            f"seeds (mean {gain:+.4f}); of those, promoted {sum(r['promoted'] for r in better)}"
            f" (the previous gate: {sum(r['old_gate_promoted'] for r in better)}); of the "
            f"others promoted {sum(r['promoted'] for r in sub if r not in better)} (previous "
            f"gate {sum(r['old_gate_promoted'] for r in sub if r not in better)})"
        )
    print(f"{time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
