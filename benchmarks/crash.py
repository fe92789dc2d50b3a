"""Crash harness: `flywheel serve` killed with SIGKILL under mixed load, again and again.

    .venv/bin/python benchmarks/crash.py [--cycles 50] [--json results.json]   # ~25 min
    .venv/bin/python benchmarks/crash.py --quick                            # 4 cycles each (~3 min)
    .venv/bin/python benchmarks/crash.py --stores sqlite --modes durable

For each store (SQLite; PostgreSQL at ``--postgres``, a throwaway database, skipped with
the reason when it does not answer) a digits project is trained once; then, for each
prediction-log mode (``durable``, the default, and ``fast``), ``--cycles`` times:

1. start `flywheel serve` (FLYWHEEL_PREDICTION_LOG=<mode>), a process group of its own;
2. ``--clients`` threads send `POST /v1/predict` (an 8x8 digit PNG, as the whole body)
   and answer every second prediction with `POST /v1/feedback`, recording each id the
   server acknowledged (200 / 201);
3. after a random ``--min-s``..``--max-s`` seconds (seeded) of answers, SIGKILL the group;
4. open the project (which replays what the journal holds) and check: every
   acknowledged prediction and answer is a row (lost = acknowledged - rows), no id or
   answer is stored twice, SQLite's ``PRAGMA integrity_check`` (PostgreSQL: amcheck's
   ``bt_index_check`` of every index of the log's tables, where the extension can be
   created), and every stored prediction's input is in the blob folder under its hash.

Then the cost of the durable log: wrk (one thread, 32 connections, ``--rate-s`` s,
``--rounds`` times per mode, interleaved; the median) against `POST /v1/predict` on the
same project: predict req/s of the durable mode over the fast one, same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    FLYWHEEL,
    Requests,
    digits_images,
    free_port,
    make_project,
    serving,
    start,
    write_lua,
    wrk,
)

MODES = ("durable", "fast")


@dataclass
class Tally:
    store: str
    mode: str
    cycles: int = 0
    predictions_acked: int = 0
    predictions_lost: int = 0
    feedback_acked: int = 0
    feedback_lost: int = 0
    duplicates: int = 0
    integrity_failures: int = 0
    blobs_bad: int = 0
    replayed_rows: int = 0  # rows a reopening found in the journal and committed
    unacknowledged_stored: int = 0  # in flight at the kill: stored, never answered
    http_errors: int = 0  # an HTTP error answer (not a dropped connection)
    integrity: str = ""
    predict_rps: list[float] = field(default_factory=list)


class Load:
    """Clients predicting and answering until the server dies."""

    def __init__(self, url: str, clients: int, images: list[bytes], labels: list[str]) -> None:
        import httpx

        self.httpx = httpx
        self.url = url
        self.images = images
        self.labels = labels
        self.lock = threading.Lock()
        self.predicted: set[str] = set()
        self.answered: dict[str, str] = {}  # feedback id -> prediction id
        self.errors: list[str] = []
        self.first = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, i: int) -> None:
        httpx = self.httpx
        n = 0
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while True:
                k = (i * 131 + n) % len(self.images)
                n += 1
                user = {"X-User-Id": f"user-{i}"}
                try:
                    r = c.post(
                        "/v1/predict",
                        content=self.images[k],
                        headers={"Content-Type": "image/png", **user},
                    )
                    if r.status_code != 200:
                        with self.lock:
                            self.errors.append(f"predict {r.status_code}: {r.text[:200]}")
                        continue
                    pid = r.json()["prediction_id"]
                    with self.lock:
                        self.predicted.add(pid)
                    self.first.set()
                    if n % 2:
                        continue
                    f = c.post(
                        "/v1/feedback",
                        json={"prediction_id": pid, "label": self.labels[k]},
                        headers=user,
                    )
                    if f.status_code != 201:
                        with self.lock:
                            self.errors.append(f"feedback {f.status_code}: {f.text[:200]}")
                        continue
                    with self.lock:
                        self.answered[f.json()["feedback_id"]] = pid
                except httpx.HTTPError:
                    return  # the server is gone (or going): stop

    def join(self) -> None:
        for t in self.threads:
            t.join(60)


def check(project_dir: Path, store: str) -> dict[str, Any]:
    """Open the project (replaying the journal) and read back what is stored."""
    from sqlalchemy import func, select, text

    from flywheel import Project
    from flywheel.store.schema import Feedback, Prediction

    t = time.perf_counter()
    project = Project.open(project_dir)
    opened_s = time.perf_counter() - t
    try:
        with project.db.session() as s:
            predictions = list(s.execute(select(Prediction.id, Prediction.input_hash)))
            feedback = list(s.execute(select(Feedback.id, Feedback.prediction_id)))
            dup_ids = s.scalar(
                select(func.count()).select_from(
                    select(Prediction.id)
                    .group_by(Prediction.id)
                    .having(func.count() > 1)
                    .subquery()
                )
            )
            if store == "sqlite":
                integrity = str(s.execute(text("PRAGMA integrity_check")).scalar())
            else:
                integrity = postgres_amcheck(s)
        blobs = project.services.ctx.blobs
        bad = 0
        for _, digest in predictions:
            if digest is None:
                continue
            try:
                if hashlib.sha256(blobs.path(digest).read_bytes()).hexdigest() != digest:
                    bad += 1
            except OSError:
                bad += 1
    finally:
        project.close()
    return {
        "predictions": {pid for pid, _ in predictions},
        "feedback": dict(feedback),
        "duplicate_ids": int(dup_ids or 0),
        "integrity": integrity,
        "blobs_bad": bad,
        "opened_s": opened_s,
    }


def postgres_amcheck(s: Any) -> str:
    """amcheck's B-tree check of every index of the log's tables ("ok" when all pass)."""
    from sqlalchemy import text

    try:
        s.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck"))
    except Exception as exc:  # not packaged here: say so
        s.rollback()
        return f"amcheck unavailable ({type(exc).__name__})"
    indexes = s.scalars(
        text(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname IN "
            "('predictions', 'feedback', 'users') AND c.relam = "
            "(SELECT oid FROM pg_am WHERE amname = 'btree')"
        )
    ).all()
    for name in indexes:
        s.execute(text("SELECT bt_index_check(CAST(:n AS regclass), true)"), {"n": name})
    return f"ok ({len(indexes)} indexes)"


def crash_cycle(
    project_dir: Path,
    mode: str,
    tally: Tally,
    seen: dict[str, Any],
    rng: random.Random,
    args: argparse.Namespace,
    images: list[bytes],
    labels: list[str],
    logs: Path,
) -> None:
    port = free_port()
    cmd = [FLYWHEEL, "serve", "--project", str(project_dir), "--port", str(port)]
    env = {"FLYWHEEL_PREDICTION_LOG": mode, "FLYWHEEL_ACCESS_LOG": "off"}
    server = start(f"{mode}-{tally.cycles}", cmd, port, logs, "/healthz", env, None, 180)
    load = Load(server.url, args.clients, images, labels)
    try:
        if not load.first.wait(60):
            raise RuntimeError(f"no prediction answered: {load.errors[:3]}")
        time.sleep(rng.uniform(args.min_s, args.max_s))
    finally:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)
        load.join()
    from flywheel.store.journal import read_segment

    # What the kill left in the journal, which opening the project now replays.
    tally.replayed_rows += sum(
        len(read_segment(p)[0]) for p in (project_dir / "journal").glob("*.journal")
    )
    stored = check(project_dir, tally.store)
    seen["predicted"] |= load.predicted
    seen["answered"].update(load.answered)
    tally.cycles += 1
    tally.http_errors += len(load.errors)
    tally.predictions_acked = len(seen["predicted"])
    tally.predictions_lost = len(seen["predicted"] - stored["predictions"])
    tally.feedback_acked = len(seen["answered"])
    tally.feedback_lost = len(set(seen["answered"]) - set(stored["feedback"]))
    # Each prediction is answered once: two stored answers to one is a duplicate.
    per_prediction: dict[str, int] = {}
    for pid in stored["feedback"].values():
        per_prediction[pid] = per_prediction.get(pid, 0) + 1
    tally.duplicates = stored["duplicate_ids"] + sum(n - 1 for n in per_prediction.values())
    if not stored["integrity"].startswith("ok"):
        tally.integrity_failures += 1
    tally.integrity = stored["integrity"]
    tally.blobs_bad = stored["blobs_bad"]
    ours = stored["predictions"] - seen["before"]
    tally.unacknowledged_stored = len(ours - seen["predicted"])
    journal = sorted((project_dir / "journal").glob("*.journal"))
    if journal:
        raise RuntimeError(f"the journal was not replayed: {[p.name for p in journal]}")
    print(
        f"  {tally.store}/{mode} cycle {tally.cycles}: acked {len(load.predicted)} predictions "
        f"and {len(load.answered)} answers; lost so far {tally.predictions_lost} / "
        f"{tally.feedback_lost}; integrity {stored['integrity']}; reopened in "
        f"{stored['opened_s']:.2f}s",
        flush=True,
    )


def throughput(
    project_dir: Path, mode: str, args: argparse.Namespace, images: list[bytes], logs: Path
) -> float:
    port = free_port()
    cmd = [FLYWHEEL, "serve", "--project", str(project_dir), "--port", str(port)]
    env = {"FLYWHEEL_PREDICTION_LOG": mode, "FLYWHEEL_ACCESS_LOG": "off"}
    script = write_lua(Requests.raw(images[:256]), logs, f"raw-{mode}")
    with serving(f"wrk-{mode}", cmd, port, logs, env=env) as server:
        cell = wrk(server.url, script, 32, args.rate_s)
    if cell.non_2xx or cell.socket_errors:
        raise RuntimeError(f"{mode}: {cell.non_2xx} errors, {cell.socket_errors} socket errors")
    print(f"  {mode}: {cell.rps:.0f} predict req/s (p99 {cell.p99_ms:.1f} ms)", flush=True)
    return cell.rps


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    name = f"flywheel_crash_{uuid.uuid4().hex[:10]}"
    info = dict(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database)
    with psycopg.connect(**info, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**info, autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_store(store: str, args: argparse.Namespace, root: Path, out: list[Tally]) -> None:
    from flywheel.data import DigitsSource

    images, labels = digits_images()
    logs = root / f"logs-{store}"
    logs.mkdir(parents=True)
    with contextlib_store(store, args) as settings:
        project_dir = root / store
        make_project(project_dir, DigitsSource(), {"epochs": args.epochs, **settings})
        rng = random.Random(args.seed)
        for mode in args.modes:
            tally = Tally(store, mode)
            before = check(project_dir, store)["predictions"]
            seen: dict[str, Any] = {"predicted": set(), "answered": {}, "before": before}
            for _ in range(args.cycles):
                crash_cycle(project_dir, mode, tally, seen, rng, args, images, labels, logs)
            out.append(tally)
        for _ in range(args.rounds):
            for tally in out[-len(args.modes) :]:
                tally.predict_rps.append(throughput(project_dir, tally.mode, args, images, logs))


@contextmanager
def contextlib_store(store: str, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    if store == "sqlite":
        yield {}
        return
    with postgres_database(args.postgres) as url:
        yield {"database_url": url}


def postgres_answers(url: str) -> str | None:
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(url)
        with psycopg.connect(
            host=u.host, port=u.port or 5432, user=u.username, dbname=u.database, connect_timeout=3
        ):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


def report(tallies: list[Tally], elapsed: float, args: argparse.Namespace) -> None:
    print()
    cols = (
        "store",
        "mode",
        "cycles",
        "predictions acked",
        "lost",
        "answers acked",
        "lost",
        "duplicates",
        "integrity",
        "bad blobs",
        "rows replayed",
        "predict req/s",
    )
    rows = []
    fast = {t.store: t for t in tallies if t.mode == "fast"}
    for t in tallies:
        rps = sorted(t.predict_rps)[len(t.predict_rps) // 2] if t.predict_rps else float("nan")
        rel = ""
        base = fast.get(t.store)
        if base is not None and base.predict_rps and t.mode != "fast":
            b = sorted(base.predict_rps)[len(base.predict_rps) // 2]
            rel = f" ({rps / b:.2f}x fast)"
        rows.append(
            (
                t.store,
                t.mode,
                str(t.cycles),
                str(t.predictions_acked),
                str(t.predictions_lost),
                str(t.feedback_acked),
                str(t.feedback_lost),
                str(t.duplicates),
                f"{t.cycles - t.integrity_failures}/{t.cycles} {t.integrity}",
                str(t.blobs_bad),
                str(t.replayed_rows),
                f"{rps:.0f}{rel}",
            )
        )
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(
        f"\n{len(tallies)} configurations, {sum(t.cycles for t in tallies)} SIGKILL cycles, "
        f"{args.clients} clients, {args.min_s}-{args.max_s} s of answers each, "
        f"{elapsed / 60:.1f} min; HTTP error answers: {sum(t.http_errors for t in tallies)}"
    )
    for t in tallies:
        print(f"  {t.store}/{t.mode}: predict req/s runs {[round(x) for x in t.predict_rps]}")
    durable_lost = sum(t.predictions_lost + t.feedback_lost for t in tallies if t.mode != "fast")
    bad = sum(t.duplicates + t.integrity_failures + t.blobs_bad for t in tallies)
    verdict = "PASS" if durable_lost == 0 and bad == 0 else "FAIL"
    print(
        f"{verdict}: the durable mode lost {durable_lost} acknowledged rows; duplicates, "
        f"integrity failures and bad blobs over all modes: {bad}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(t) for t in tallies], indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="4 cycles and one 2 s wrk run")
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--min-s", type=float, default=0.3)
    ap.add_argument("--max-s", type=float, default=1.5)
    ap.add_argument("--rate-s", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3, help="wrk runs per mode (median)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--postgres",
        default=os.environ.get(
            "FLYWHEEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    ap.add_argument("--keep", type=Path, help="keep projects and server logs here")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.quick:
        args.cycles, args.rate_s, args.rounds = 4, 2.0, 1
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(MODES):
        ap.error(f"--modes takes {', '.join(MODES)}")
    stores = [s for s in args.stores.split(",") if s]
    t0 = time.perf_counter()
    tallies: list[Tally] = []
    root = args.keep or Path(tempfile.mkdtemp(prefix="flywheel-crash-"))
    root.mkdir(parents=True, exist_ok=True)
    for store in stores:
        if store == "postgresql":
            why = postgres_answers(args.postgres)
            if why is not None:
                print(f"postgresql: skipped ({why})")
                continue
        print(f"{store}:", flush=True)
        run_store(store, args, root, tallies)
    report(tallies, time.perf_counter() - t0, args)
    if args.keep is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
