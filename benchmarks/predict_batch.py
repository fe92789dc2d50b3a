"""`flywheel predict-batch` in process against on Ray Data: images/s on cifar10-mini, and
the same answers both ways.

    tools/in-netns .venv/bin/python benchmarks/predict_batch.py [--n 5000] [--json r.json]

A project is made from ``cifar10-mini/test`` (1,000 images) and trained briefly
(``--epochs`` 1, ``--arch`` seed_cnn at 64x64: the figure is scoring speed, not
accuracy). The first ``--n`` images of ``cifar10-mini/train`` (class by class) are
listed in a CSV manifest and scored by production, every row logged as a served call
is, twice in one run:

- ``local``: in this process, the one scorer in a loop (the same-run baseline);
- ``ray``: Ray Data on a real cluster started here (``tests.on_ray.cluster``:
  ``--cpus`` 1,1, one node per entry), ``map_batches`` over ``--actors`` (2) actors
  each holding the ONNX graph.

Each arm prints images/s end to end (the Ray arm's includes starting its actors: a
fixed cost, which ``--n`` amortises) and its ratio to the local arm, when its first
batch was logged (the Ray arm's: once an actor had started), and how many of its actors
scored rows (on a small run the first actor up may take every batch). The run
fails unless both give the same labels and probabilities within 1e-6 on every image.
Ray binds the machine's address unless it runs in a network namespace of its own with
only loopback: run it under ``tools/in-netns``. Skips when ``../shared/datasets`` is
absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from flywheel import Project
from flywheel.data import ImageFolderSource

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cifar10-mini"
TOLERANCE = 1e-6


class Clock:
    """When the first batch was logged, and how many rows it held."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: tuple[float, int] | None = None

    def __call__(self, done: int, bad: int, total: int) -> None:
        if self.first is None and done:  # not the call before any row (the count)
            self.first = (time.perf_counter(), done)


def score(project: Project, manifest: Path, out: Path, on: str, args: Any) -> dict[str, Any]:
    clock = Clock()
    report = project.predict_batch(
        manifest, on=on, out=out, batch_size=args.batch_size, actors=args.actors,
        on_progress=clock,
    )  # fmt: skip
    ended = time.perf_counter()
    assert clock.first is not None and report.bad == 0, report.to_json()
    t_first, _ = clock.first
    return {
        "on": on,
        "rows": report.rows,
        "seconds": round(ended - clock.started, 2),
        "images_per_s": round(report.rows / (ended - clock.started), 1),
        "first_batch_s": round(t_first - clock.started, 2),
        "actors": report.actors,
        "scorers": len(report.scorers),  # the actors that scored rows
    }


def same_answers(a: Path, b: Path) -> dict[str, Any]:
    ra = [json.loads(line) for line in a.read_text().splitlines()]
    rb = [json.loads(line) for line in b.read_text().splitlines()]
    assert [r["input"] for r in ra] == [r["input"] for r in rb]
    labels = sum(x["label"] == y["label"] for x, y in zip(ra, rb, strict=True))
    diff = max(
        abs(p - y["probabilities"][k])
        for x, y in zip(ra, rb, strict=True)
        for k, p in x["probabilities"].items()
    )
    return {"n": len(ra), "same_labels": labels, "max_abs_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="images of cifar10-mini/train to score")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus", default="1,1", help="CPUs of each Ray node, head first")
    ap.add_argument("--port", type=int, default=6379, help="the Ray head's port")
    ap.add_argument("--arch", default="seed_cnn")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return
    sys.path.insert(0, str(ROOT))  # tests.on_ray.cluster
    from tests.on_ray.cluster import LocalCluster, in_own_netns

    if not in_own_netns():
        sys.exit("run it in a network namespace of its own: tools/in-netns .venv/bin/python ...")
    torch.set_num_threads(1)  # the two arms on the same footing: one thread per scorer
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        work = Path(tmp)
        project = Project.init(
            work / "p", ImageFolderSource(DATA / "test"), settings={"arch": args.arch}
        )
        project.train(project.train_config(epochs=args.epochs, patience=1))
        files = [f for f, _ in ImageFolderSource(DATA / "train").files][: args.n]
        manifest = work / "inputs.csv"
        with manifest.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "path"])
            w.writerows([f.relative_to(DATA).as_posix(), str(f)] for f in files)
        local = score(project, manifest, work / "local.jsonl", "local", args)
        cpus = tuple(int(c) for c in args.cpus.split(","))
        cluster = LocalCluster(work / "ray", cpus=cpus, port=args.port).start()
        try:
            project.close()
            project = Project.open(work / "p", ray_address=cluster.address)
            on_ray = score(project, manifest, work / "ray.jsonl", "ray", args)
        finally:
            project.close()
            cluster.stop()
        check = same_answers(work / "local.jsonl", work / "ray.jsonl")
    for arm in (local, on_ray):
        arm["ratio_to_local"] = round(arm["images_per_s"] / local["images_per_s"], 3)
    head = ("arm", "images", "seconds", "images/s", "ratio", "1st batch s")
    print(f"{head[0]:<16}" + "".join(f"{h:>12}" for h in head[1:]))
    for arm in (local, on_ray):
        busy = f"{arm['scorers']}/{arm['actors']}"
        name = "in process" if arm["on"] == "local" else f"ray, {busy} actors"
        cells = (arm["rows"], arm["seconds"], arm["images_per_s"], arm["ratio_to_local"],
                 arm["first_batch_s"])  # fmt: skip
        print(f"{name:<16}" + "".join(f"{c!s:>12}" for c in cells))
    print(
        f"same answers on {check['n']} images: {check['same_labels']} labels equal, "
        f"max |diff| of a probability {check['max_abs_diff']:.2e} (allowed {TOLERANCE:g})"
    )
    print(f"{time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"arms": [local, on_ray], "check": check}, indent=2))
    assert check["same_labels"] == check["n"] and check["max_abs_diff"] <= TOLERANCE


if __name__ == "__main__":
    main()
