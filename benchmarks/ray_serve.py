"""`flywheel serve --on ray` (Ray Serve replicas) against `flywheel serve --workers N`
(uvicorn processes) on the same machine, the same project, in the same run.

    tools/in-netns .venv/bin/python benchmarks/ray_serve.py [--duration 5] [--json out.json]
    tools/in-netns .venv/bin/python benchmarks/ray_serve.py --quick     # a smoke run (~6 min)

Run inside a network namespace of its own with only loopback (``tools/in-netns``): Ray
binds 127.0.0.1 there. Needs `wrk` (Debian: `apt-get install -y wrk`). A digits project
(``seed_cnn`` 8x8) is trained twice (v1 in production, v2 beside it); then each arm, one
after the other, on a free loopback port:

- ``uvicorn``: `flywheel serve --workers N` (the baseline).
- ``ray``: `flywheel serve --on ray` with ``serve_replicas`` = N (one CPU reserved each) on
  a one-node Ray cluster of this machine's CPUs (``tests/on_ray/cluster.py``'s
  LocalCluster: `ray start --head`, no dashboard), started before the arm and stopped
  after it.

On each, wrk (one thread, keep-alive, the Lua of ``benchmarks/serving.py``) sends
`POST /v1/predict` (8x8 digit PNGs, multipart, 256 taken in turn; every call logged) and
`GET /healthz` at each of ``--connections``, ``--duration`` seconds per cell after a
``--warmup``. Then a promote under load: wrk at 32 connections for ``--promote-s``
seconds while a thread, 2 s in, promotes v2 through the API (an admin key), waits for
it to be served everywhere, rolls back and waits again. The failed requests are wrk's
non-2xx answers, socket errors and timeouts (0 is the target); ``switch`` is the time
from a move's answer to the first of 20 answers in a row (each on a new connection, so
over every worker or replica, between wrk's) that carry the new version: uvicorn's
workers poll the alias every ``reload_interval_s`` (1 s), Ray Serve's replicas are
reconfigured in place by the one that answered the move.

Figures, as ratios from the same run: ray / uvicorn req/s and p99 at 32 connections on
both routes. The machine's other work shares the CPUs: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    FLYWHEEL,
    HOST,
    Cell,
    Requests,
    Server,
    digits_images,
    free_port,
    group_cpu,
    make_project,
    probe,
    serving,
    versions,
    write_lua,
    wrk,
)

ROUTES = ("predict", "healthz")


@dataclass
class Promotion:
    cell: Cell | None = None
    moves: list[str] = field(default_factory=list)  # "promote 200 in 0.31s", ...
    switch_s: float | None = None  # promote answered -> 20 answers in a row of v2
    switch_back_s: float | None = None  # the same for the rollback
    under_load: bool = False  # both moves and their switches ended before wrk's run

    @property
    def failed(self) -> int | None:
        c = self.cell
        return None if c is None else c.non_2xx + c.socket_errors + c.timeouts


@dataclass
class ArmResult:
    name: str
    what: str
    cells: dict[str, list[Cell]] = field(default_factory=dict)
    promotion: Promotion = field(default_factory=Promotion)
    ready_s: float = 0.0

    def at(self, route: str, connections: int) -> Cell | None:
        return next((c for c in self.cells.get(route, []) if c.connections == connections), None)


def ray_workers_cpu() -> tuple[int, float]:
    """Ray's worker processes (replicas, controller, proxy: titled ``ray::...``) and the
    CPU seconds they have used."""
    n, ticks = 0, 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        n += 1
        ticks += int(fields[11]) + int(fields[12])
    return n, ticks / os.sysconf("SC_CLK_TCK")


def settle(pgid: int, ray: bool, timeout: float = 120.0) -> str:
    """Until the server's processes (and Ray's workers) have gone idle: every worker or
    replica loaded."""
    t0 = time.monotonic()

    def used() -> tuple[int, float]:
        found = [group_cpu(pgid), ray_workers_cpu() if ray else (0, 0.0)]
        return sum(n for n, _ in found), sum(c for _, c in found)

    n, cpu = used()
    quiet = 0
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        n, now = used()
        quiet = quiet + 1 if now - cpu < 0.05 else 0
        cpu = now
        if quiet >= 2:
            return f"{n} processes, idle"
    return f"{n} processes, still busy after {timeout:.0f}s"


def _post(url: str, path: str, key: str) -> tuple[int, float]:
    import httpx

    t = time.perf_counter()
    r = httpx.post(url + path, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    return r.status_code, time.perf_counter() - t


def _switch_s(
    url: str, version: int, images: Sequence[bytes], since: float, timeout: float = 30.0
) -> float | None:
    """Seconds from ``since`` (the move answered) to the first of 20 answers in a row that
    carry ``version``, each on a new connection (over every worker or replica); None:
    not within ``timeout``."""
    import httpx

    row, first = 0, 0.0
    k = 0
    while time.perf_counter() - since < timeout:
        k += 1
        files = {"file": ("d.png", images[k % len(images)], "image/png")}
        sent = time.perf_counter()
        r = httpx.post(url + "/v1/predict", files=files, headers={"Connection": "close"})
        if r.status_code == 200 and r.json()["model_version"] == version:
            first = sent if row == 0 else first
            row += 1
            if row >= 20:
                return first - since
        else:
            row = 0
    return None


def promote_under_load(
    url: str, script: Path, seconds: float, v2: int, key: str, images: Sequence[bytes]
) -> Promotion:
    """wrk for ``seconds``; 2 s in, promote v2, wait for every process to serve it, roll
    back, wait again."""
    out = Promotion()

    def moves() -> None:
        time.sleep(2.0)
        status, took = _post(url, f"/v1/models/{v2}/promote", key)
        out.moves.append(f"promote {status} in {took:.2f}s")
        out.switch_s = _switch_s(url, v2, images, time.perf_counter())
        status, took = _post(url, "/v1/rollback", key)
        out.moves.append(f"rollback {status} in {took:.2f}s")
        out.switch_back_s = _switch_s(url, 1, images, time.perf_counter())

    mover = threading.Thread(target=moves)
    mover.start()
    out.cell = wrk(url, script, 32, seconds)
    out.under_load = not mover.is_alive()
    mover.join(120)
    return out


def measure(
    arm: ArmResult,
    server: Server,
    ray: bool,
    args: argparse.Namespace,
    ctx: dict[str, Any],
) -> None:
    print(f"  {arm.name} ready in {arm.ready_s:.0f}s: {settle(server.proc.pid, ray)}", flush=True)
    for route, reqs in ctx["requests"].items():
        print(f"  {arm.name:<8} {route}: one request: {probe(server.url, reqs)[:90]}")
        script = write_lua(reqs, ctx["work"], f"{arm.name}-{route}")
        if args.warmup > 0:
            wrk(server.url, script, 8, args.warmup)
        for c in args.connections:
            cell = wrk(server.url, script, c, args.duration)
            arm.cells.setdefault(route, []).append(cell)
            print(
                f"  {arm.name:<8} {route:<8}{c:>4} conns {cell.rps:>8.1f} req/s  "
                f"p99 {cell.p99_ms:7.1f} ms  non-2xx {cell.non_2xx}",
                flush=True,
            )
    script = write_lua(ctx["requests"]["predict"], ctx["work"], f"{arm.name}-promote")
    p = promote_under_load(server.url, script, args.promote_s, ctx["v2"], ctx["key"], ctx["images"])
    arm.promotion = p
    print(
        f"  {arm.name:<8} promote under load: {p.cell.requests if p.cell else 0} requests, "
        f"failed {p.failed}; {', '.join(p.moves)}; switch {p.switch_s} / {p.switch_back_s} s"
        f"{'' if p.under_load else ' (the moves outlasted the run: --promote-s)'}",
        flush=True,
    )


@contextmanager
def ray_cluster(work: Path) -> Iterator[Any]:
    from tests.on_ray.cluster import LocalCluster

    cluster = LocalCluster(work / "ray", cpus=(os.cpu_count() or 2,))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


def report(arms: dict[str, ArmResult], args: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    print(
        f"\n{'arm':<9}{'route':<9}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'requests':>10}{'non-2xx':>9}{'sock err':>9}"
    )
    for arm in arms.values():
        for route, cells in arm.cells.items():
            for c in cells:
                print(
                    f"{arm.name:<9}{route:<9}{c.connections:>6}{c.rps:>10.1f}{c.p50_ms:>9.2f}"
                    f"{c.p99_ms:>9.2f}{c.requests:>10}{c.non_2xx:>9}{c.socket_errors:>9}"
                )
    ratios: dict[str, float | None] = {}
    base, ray = arms.get("uvicorn"), arms.get("ray")
    for route in ROUTES:
        a = None if ray is None else ray.at(route, 32)
        b = None if base is None else base.at(route, 32)
        ratios[f"{route}_rps_ray_over_uvicorn"] = a.rps / b.rps if a and b and b.rps else None
        ratios[f"{route}_p99_ray_over_uvicorn"] = (
            a.p99_ms / b.p99_ms if a and b and b.p99_ms else None
        )
    print("\nat 32 connections, ray / uvicorn (the same run):")
    for k, v in ratios.items():
        print(f"  {k:<32}{'-' if v is None else f'{v:.2f}'}")
    print("promote + rollback under load (32 connections):")
    for arm in arms.values():
        p = arm.promotion
        print(
            f"  {arm.name:<9}failed {p.failed} of {p.cell.requests if p.cell else 0}  switch "
            f"{_s(p.switch_s)} / back {_s(p.switch_back_s)}  ({', '.join(p.moves)})"
            f"{'' if p.under_load else ' not all under load'}"
        )
    print(f"({elapsed:.0f} s; load average {os.getloadavg()[0]:.2f} at the end)")
    return {
        "arms": {
            n: {
                "what": a.what,
                "ready_s": a.ready_s,
                "cells": {r: [asdict(c) for c in cs] for r, cs in a.cells.items()},
                "promotion": {**asdict(a.promotion), "failed": a.promotion.failed},
            }
            for n, a in arms.items()
        },
        "ratios": ratios,
        "args": {k: str(v) for k, v in vars(args).items()},
        "versions": versions(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per route")
    ap.add_argument("--connections", default="1,8,32")
    ap.add_argument("--processes", type=int, default=2, help="workers / replicas")
    ap.add_argument("--promote-s", type=float, default=30.0, help="the promote-under-load run")
    ap.add_argument("--epochs", type=int, default=3, help="digits training epochs")
    ap.add_argument("--arms", default="uvicorn,ray")
    ap.add_argument("--quick", action="store_true", help="2 s cells at 32 connections")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", type=Path, help="keep the project, scripts and logs here")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup, args.connections, args.epochs = 2.0, 0.5, "32", 1
        args.promote_s = 25.0
    from tests.on_ray.cluster import in_own_netns

    if "ray" in args.arms.split(",") and not in_own_netns():
        raise SystemExit("run it in a network namespace of its own: tools/in-netns ...")
    args.connections = [int(c) for c in args.connections.split(",")]
    if 32 not in args.connections:
        args.connections.append(32)
    started = time.perf_counter()
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="fw-ray-serve-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    print(
        f"ray serve benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"{args.processes} workers / replicas; {args.duration:g}s per cell, connections "
        f"{args.connections}",
        flush=True,
    )
    from flywheel import Project
    from flywheel.data import DigitsSource

    project_dir = work / "digits-project"
    make_project(project_dir, DigitsSource(), {"epochs": args.epochs, "patience": args.epochs})
    project = Project.open(project_dir)
    v2 = project.train(project.train_config(seed=1)).model.version
    if project.production_version() == v2:
        project.rollback()
    key, _ = project.create_key(["admin"])
    project.close()
    images, _ = digits_images()
    requests = {"predict": Requests.uploads(images[:256]), "healthz": Requests.get("/healthz")}
    ctx: dict[str, Any] = {
        "work": work,
        "v2": v2,
        "key": key,
        "images": images[:256],
        "requests": requests,
    }
    n = str(args.processes)
    arms: dict[str, ArmResult] = {}
    wanted = args.arms.split(",")
    if "uvicorn" in wanted:
        arm = arms["uvicorn"] = ArmResult("uvicorn", f"flywheel serve --workers {n}")
        port = free_port()
        cmd = [str(FLYWHEEL), "serve", "--project", str(project_dir), "--host", HOST]
        t = time.perf_counter()
        with serving(
            "uvicorn", [*cmd, "--port", str(port), "--workers", n], port, work / "logs"
        ) as srv:
            arm.ready_s = time.perf_counter() - t
            measure(arm, srv, False, args, ctx)
    if "ray" in wanted:
        arm = arms["ray"] = ArmResult("ray", f"flywheel serve --on ray, serve_replicas {n}")
        with ray_cluster(work) as cluster:
            port = free_port()
            cmd = [
                str(FLYWHEEL),
                "serve",
                "--on",
                "ray",
                "--project",
                str(project_dir),
                "--host",
                HOST,
            ]
            env = {
                "FLYWHEEL_RAY_ADDRESS": cluster.address,
                "FLYWHEEL_SERVE_REPLICAS": n,
                "FLYWHEEL_SERVE_REPLICA_CPUS": "1",
            }
            t = time.perf_counter()
            cmd += ["--port", str(port)]
            with serving("ray", cmd, port, work / "logs", env=env, timeout=300) as srv:
                arm.ready_s = time.perf_counter() - t
                measure(arm, srv, True, args, ctx)
    results = report(arms, args, time.perf_counter() - started)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
