"""Training on Ray Train against the plain loop, on a real multi-node Ray cluster of this
machine (a head and one joined node, each with its own temp dir and CPUs): the same
config and seed on cifar10-mini (../shared/datasets), trained in this process, on one
Ray worker and on two; a table of each run's held-out accuracy and seconds per epoch.

    tools/in-netns .venv/bin/python tools/ray_train_check.py [--epochs 10] [--limit 500]

``--limit``: training images per class (500: all of them); the held-out accuracy is on
the test split (100 a class). The plain loop runs ``--threads`` torch threads (default:
the CPUs of one node, what each Ray worker has; then one worker gives the plain loop's
weights to the bit). Seconds per epoch are the steady state, between the first and the
last epoch's report as the caller hears them; "wall" counts the whole run (a Ray Train
run's start included). The two-worker run must reach the plain loop's accuracy
within 1 point, i.e. be at most 1 point short of it (exit 1 otherwise). Skips, saying
so, without the data set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cifar10-mini"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


class Clock:
    """An ``on_epoch`` that notes when each epoch's report arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, _report: Any) -> None:
        self.times.append(time.perf_counter())

    def per_epoch(self, started: float) -> float:
        t = self.times
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else t[-1] - started


def examples(limit: int) -> list[Any]:
    from flywheel.data import HOLDOUT, TRAIN, RawExample

    out = []
    for split, name, n in ((TRAIN, "train", limit), (HOLDOUT, "test", 100)):
        for folder in sorted(p for p in (DATA / name).iterdir() if p.is_dir()):
            for f in sorted(folder.glob("*.jpg"))[:n]:
                out.append(RawExample(f.read_bytes(), folder.name, split=split,
                                      source_path=f"{name}/{folder.name}/{f.name}"))  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10, help="epochs of each run (no early stop)")
    ap.add_argument("--limit", type=int, default=500, help="training images per class")
    ap.add_argument("--arch", default="cnn32", help="architecture (the zoo's)")
    ap.add_argument("--cpus", type=int, default=1, help="CPUs of each of the two nodes")
    ap.add_argument("--threads", type=int, default=None, help="the plain loop's torch threads")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the setting's")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is not there (see ../shared/datasets/README)")
        return 0
    from tests.on_ray.cluster import LocalCluster, in_own_netns

    if not in_own_netns():
        print("run it in a network namespace of its own: tools/in-netns .venv/bin/python ...")
        return 2

    import torch

    from flywheel import Project
    from flywheel.data import ListSource
    from flywheel.models import create_model
    from flywheel.scale.train import fit_on_ray
    from flywheel.training import fit, model_spec, predict_proba, seed_everything

    work = Path(tempfile.mkdtemp(prefix="ray-train-check-"))
    t0 = time.perf_counter()
    project = Project.init(
        work / "p", ListSource("cifar10-mini", examples(args.limit)), settings={"arch": args.arch}
    )
    # every epoch runs (the same count in each run); the model kept is the best epoch's
    config = project.train_config(
        epochs=args.epochs, patience=args.epochs, refit=False, batch_size=args.batch_size
    )
    info = project.dataset()
    spec = model_spec(project.task, info.preprocessing, info.labels, config)
    train, held = project.dataset_arrays("train", config), project.dataset_arrays("holdout", config)
    settings = project.settings
    project.close()
    print(f"cifar10-mini: {len(train)} training images, {len(held)} held out, {args.arch}, "
          f"{args.epochs} epochs, batch {config.batch_size} ({time.perf_counter() - t0:.0f} s "
          "to import)", flush=True)  # fmt: skip

    seed_everything(config.seed)
    start = create_model(spec).state_dict()
    rows: list[dict[str, Any]] = []

    def run(label: str, workers: int, train_fn: Any) -> torch.nn.Module:
        model = create_model(spec)
        model.load_state_dict(start)
        clock = Clock()
        began = time.perf_counter()
        train_fn(model, clock, workers)
        wall = time.perf_counter() - began
        acc = float((predict_proba(model, held.x).argmax(1) == held.y).mean())
        rows.append({"run": label, "workers": workers, "acc": acc, "spe": clock.per_epoch(began),
                     "wall": wall})  # fmt: skip
        print(f"  {label}: accuracy {acc:.4f}, {rows[-1]['spe']:.2f} s/epoch", flush=True)
        return model

    threads = args.threads or args.cpus
    torch.set_num_threads(threads)

    def in_process(model: torch.nn.Module, clock: Clock, _workers: int) -> None:
        fit(model, train, config, on_epoch=clock)

    plain = run(f"plain loop ({threads} thread{'s' if threads > 1 else ''})", 1, in_process)
    cluster = LocalCluster(work / "ray", cpus=(args.cpus, args.cpus))
    cluster.start()
    try:
        st = settings.model_copy(update={"ray_address": cluster.address})

        def on_ray(model: torch.nn.Module, clock: Clock, workers: int) -> None:
            fit_on_ray(model, train, replace(config, workers=workers), spec=spec, settings=st,
                       on_epoch=clock)  # fmt: skip

        one = run("Ray Train, 1 worker", 1, on_ray)
        run("Ray Train, 2 workers (2 nodes)", 2, on_ray)
    finally:
        cluster.stop()

    base = rows[0]
    print()
    head = ("accuracy", "vs plain", "s/epoch", "x plain", "wall s")
    print(f"{'run':<32} {head[0]:>8} {head[1]:>9} {head[2]:>8} {head[3]:>8} {head[4]:>7}")
    for r in rows:
        print(f"{r['run']:<32} {r['acc']:>8.4f} {100 * (r['acc'] - base['acc']):>+8.2f}p "
              f"{r['spe']:>8.2f} {r['spe'] / base['spe']:>8.2f} {r['wall']:>7.1f}")  # fmt: skip
    gap = max(float((one.state_dict()[k] - v).abs().max()) for k, v in plain.state_dict().items())
    print(f"\n1 Ray worker vs the plain loop: max |weight difference| {gap:.3g}"
          + ("" if threads == 1 else f" (the plain loop ran {threads} torch threads, the "
             "worker 1: sums in another order)"))  # fmt: skip
    # "reaches the single-process accuracy within 1 point": at most 1 point short of it
    within = rows[2]["acc"] >= base["acc"] - 0.01
    print(f"2 workers reach the plain loop's accuracy within 1 point: {'yes' if within else 'NO'}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
