"""Jobs shared across servers, one killed midway (issue 17): the must-show, bounded.

    .venv/bin/python tools/jobs_kill_check.py [--jobs 50] [--servers 2] [--kills 1]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test] [--timeout 900]
        [--keep DIR]

A throwaway PostgreSQL database (made from ``--postgres``'s, dropped at the end) and a
small digits project on it (v1 trained; the gate set to promote, a quick job ticker:
``policy_check_s`` 0.25, ``job_lease_s`` 3, ``job_attempts`` 2). ``--servers`` real
``flywheel serve`` processes on their own ports serve it; one client per server answers
predictions as new users, asks that server for retrains (each with its own seed, so
that none joins another; a 409 while another retrain waits is asked again once that one
started) and now and then forgets a user it answered as (a forget-retrain when
production used their rows), until ``--jobs`` jobs were accepted. Once a third of them
finished, server 2 is killed with SIGKILL while it trains a job; with ``--kills 2``
(and 3 servers) the server running that job's retry is killed too, while it trains it.

Then the evidence, from the database and from the servers' own logs (the script exits
1 if any of it does not hold): every job finished; each ran once, or was retried (its
earlier attempts all stopped by a killed server) and then succeeded or failed with the
reason; no two attempts of any jobs overlapped in time (one retrain at a time,
everywhere); every model version registered after v1 lies inside exactly one attempt,
of the job whose seed it carries; each attempt's start (and, unless it was killed, its
end) is in the log of the server that owned it, and nowhere else. A table of outcomes
is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN, ListSource, RawExample, digits_arrays, encode_png

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SETTINGS = {
    "epochs": 3, "patience": 2, "batch_size": 32, "image_size": 8, "refit": False,
    "policy_check_s": 0.25, "job_lease_s": 3.0, "job_attempts": 2,
    "gate_margin": 1.0, "gate_class_margin": None,  # every challenger promoted
}  # fmt: skip
#: a line of a server's log: an attempt's start or end (serving/jobs.py)
STARTED = re.compile(
    r"flywheel: job ([0-9a-f-]{36}) \([^)]*\): attempt (\d+) of \d+ started on (\S+)"
)
ENDED = re.compile(r"flywheel: job ([0-9a-f-]{36}): attempt (\d+) (succeeded|failed) on (\S+): ")
FINISHED = ("succeeded", "failed")


@contextlib.contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database on ``admin_url``'s server, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    name = f"flywheel_kill_{uuid.uuid4().hex[:12]}"
    conninfo: dict[str, Any] = {"host": url.host, "port": url.port or 5432, "user": url.username,
                "dbname": url.database, "password": url.password}  # fmt: skip
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def digits(start: int, n: int) -> list[tuple[bytes, str]]:
    images, labels = digits_arrays()
    return [(encode_png(images[i]), str(labels[i])) for i in range(start, start + n)]


class Server:
    """``flywheel serve`` in a child process (its own session), its log in a file."""

    def __init__(self, name: str, root: Path, logs: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logs / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [FLYWHEEL, "serve", "--project", str(root), "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        self.killed_at: datetime | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def owns(self, owner: str | None) -> bool:
        return owner is not None and owner.split(":")[1:2] == [str(self.pid)]

    def wait_ready(self, deadline: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.1)

    def kill(self) -> None:
        self.killed_at = datetime.now(UTC)
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Asked:
    """What the clients were given: job id -> (server name, kind, params)."""

    jobs: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, job_id: str, server: str, kind: str, params: dict[str, Any]) -> None:
        with self.lock:
            self.jobs.setdefault(job_id, (server, kind, params))


class Client(threading.Thread):
    """Answers, retrains and forgets through one server until ``enough`` or it dies."""

    def __init__(self, k: int, server: Server, key: str, asked: Asked, enough: Any) -> None:
        super().__init__(name=f"client-{server.name}", daemon=True)
        self.k, self.server, self.asked, self.enough = k, server, asked, enough
        self.headers = {"Authorization": f"Bearer {key}"}
        self.error: str | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.server.url, headers=self.headers, timeout=60) as c:
                for i in range(10_000):
                    if self.enough() or self.server.killed_at is not None:
                        return
                    self._round(c, i)
        except (httpx.HTTPError, OSError) as exc:  # its server was killed
            if self.server.killed_at is None:
                self.error = repr(exc)

    def _round(self, c: httpx.Client, i: int) -> None:
        user = f"{self.server.name}-{i}"
        for png, label in digits(1000 + (self.k * 1000 + i * 3) % 790, 3):
            files = {"file": ("d.png", png, "image/png")}
            pid = c.post("/v1/predict", files=files, headers={"X-User-Id": user})
            pid.raise_for_status()
            answer = {"prediction_id": pid.json()["prediction_id"], "label": label}
            c.post("/v1/feedback", json=answer, headers={"X-User-Id": user}).raise_for_status()
        seed = 1000 * (self.k + 1) + i
        while not self.enough():
            r = c.post("/v1/retrain", json={"seed": seed})
            if r.status_code == 202:
                self.asked.add(r.json()["job_id"], self.server.name, "retrain", {"seed": seed})
                break
            assert r.status_code == 409, r.text  # another retrain waits: once it starts
            self.asked.refused[self.server.name] += 1
            time.sleep(0.1)
        if i % 3 == 2 and not self.enough():
            r = c.delete(f"/v1/users/{self.server.name}-{i - 2}")
            r.raise_for_status()
            body = r.json()
            if body.get("retrain_job"):
                params = {"audit_id": body["audit_id"]}
                self.asked.add(body["retrain_job"], self.server.name, "forget-retrain", params)


def make_project(root: Path, database_url: str) -> str:
    """The project on the throwaway database, v1 trained; an admin key."""
    images, labels = digits_arrays()
    rows = [
        RawExample(encode_png(images[j]), str(labels[j]), split=TRAIN if j < 150 else HOLDOUT,
                   source_path=f"digits[{j}]")
        for j in range(210)
    ]  # fmt: skip
    p = Project.init(
        root, ListSource("digits-kill", rows), settings={**SETTINGS, "database_url": database_url}
    )
    try:
        p.train()
        key, _ = p.create_key(["predict", "feedback", "admin"], "kill-check")
    finally:
        p.close()
    return key


def running_on(p: Project, server: Server, job_id: str | None = None) -> dict[str, Any] | None:
    """A job ``server`` is training now (an epoch line of this attempt), if any."""
    for j in p.jobs(200):
        if j["status"] != "running" or not server.owns(j["owner"]):
            continue
        if job_id is not None and j["job_id"] != job_id:
            continue
        retried = [n for n, line in enumerate(j["log"]) if line.startswith("attempt ")]
        this_attempt = j["log"][retried[-1] + 1 :] if retried else j["log"]
        if any(line.startswith("epoch ") for line in this_attempt):
            return j
    return None


@dataclass
class Report:
    jobs: list[dict[str, Any]]
    rows: list[tuple[str, int, int]]  # outcome, retrain, forget-retrain
    kills: list[tuple[str, str, int]]  # server, the job it was running, its attempt
    violations: list[str]
    numbers: dict[str, Any]


def check(
    admin_url: str = ADMIN_URL,
    *,
    jobs: int = 50,
    servers: int = 2,
    kills: int = 1,
    timeout_s: float = 900,
    keep: Path | None = None,
    say: Any = print,
) -> Report:
    if kills >= servers:
        raise ValueError(f"--kills {kills} needs more than {kills} servers (one survives)")
    deadline = time.monotonic() + timeout_s
    work = Path(tempfile.mkdtemp(prefix="flywheel-kill-")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with throwaway_database(admin_url) as url:
        key = make_project(work / "p", url)
        say(f"project {work / 'p'} on a throwaway PostgreSQL database; v1 trained")
        fleet = [Server(f"s{n + 1}", work / "p", work) for n in range(servers)]
        watcher = Project.open(work / "p")
        asked = Asked()
        killed: list[tuple[str, str, int]] = []
        try:
            for s in fleet:
                s.wait_ready(deadline)
            say(f"{servers} servers up: " + ", ".join(f"{s.name} pid {s.pid}" for s in fleet))

            def enough() -> bool:
                return len(asked.jobs) >= jobs or time.monotonic() > deadline

            clients = [Client(k, s, key, asked, enough) for k, s in enumerate(fleet)]
            for c in clients:
                c.start()
            _kill_midway(watcher, fleet, asked, jobs, kills, killed, deadline, say)
            for c in clients:
                c.join(max(1.0, deadline - time.monotonic()))
            errors = [f"{c.name}: {c.error}" for c in clients if c.error]
            if errors:
                raise RuntimeError("; ".join(errors))
            say(f"{len(asked.jobs)} jobs asked for; waiting for every one to finish")
            while (
                not all(watcher.job(j)["status"] in FINISHED for j in list(asked.jobs))
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            report = _evidence(watcher, fleet, asked, killed, time.monotonic() - started)
        finally:
            watcher.close()
            for s in fleet:
                s.stop()
            if keep is None:
                shutil.rmtree(work, ignore_errors=True)
    return report


def _kill_midway(
    p: Project,
    fleet: list[Server],
    asked: Asked,
    jobs: int,
    kills: int,
    killed: list[tuple[str, str, int]],
    deadline: float,
    say: Any,
) -> None:
    """Kill ``fleet[1]`` while it trains, once a third of the jobs finished; then each
    server running the retry of the job the kill before interrupted, while it trains it."""
    while time.monotonic() < deadline:
        done = sum(p.job(j)["status"] in FINISHED for j in list(asked.jobs))
        if done >= jobs // 3:
            break
        time.sleep(0.2)
    victim, job_id = fleet[1], None
    for n in range(kills):
        while time.monotonic() < deadline:
            j = running_on(p, victim, job_id)
            if j is not None:
                break
            if job_id is not None:  # the retry runs elsewhere: follow it there
                holder = next((s for s in fleet if s.owns(p.job(job_id)["owner"])), None)
                if holder is not None and holder.killed_at is None:
                    victim = holder
            time.sleep(0.02)
        else:
            raise RuntimeError(f"kill {n + 1}: {victim.name} never trained a job")
        victim.kill()
        killed.append((victim.name, j["job_id"], j["attempts"]))
        say(
            f"SIGKILL {victim.name} (pid {victim.pid}) at {victim.killed_at:%H:%M:%S.%f}: "
            f"it was training job {j['job_id'][:8]} ({j['kind']}), attempt {j['attempts']}, "
            f"{len(j['log'])} progress lines in"
        )
        job_id, victim = j["job_id"], next(s for s in fleet if s.killed_at is None)


def _tries(job: dict[str, Any]) -> list[tuple[datetime, datetime, int, str, str]]:
    return [
        (datetime.fromisoformat(t["started_at"]), datetime.fromisoformat(t["ended_at"]),
         t["attempt"], t["owner"], t["outcome"])
        for t in job["tries"]
    ]  # fmt: skip


def _outcome(job: dict[str, Any]) -> str:
    n = job["attempts"]
    if job["status"] == "failed" and job["tries"] and job["tries"][-1]["outcome"] == "stopped":
        return f"tried {n} times, its worker killed each time: failed with the reason"
    how = "ran once" if n == 1 else f"retried once ({n} attempts)"
    verdict = "succeeded" if job["status"] == "succeeded" else "failed (its own error)"
    return f"{how}, {verdict}"


def _evidence(
    p: Project,
    fleet: list[Server],
    asked: Asked,
    killed: list[tuple[str, str, int]],
    seconds: float,
) -> Report:
    bad: list[str] = []
    jobs = [p.job(j) for j in asked.jobs]
    in_db = {j["job_id"] for j in p.jobs(1000)}
    if in_db != set(asked.jobs):
        bad.append(f"jobs in the database {len(in_db)} != jobs asked for {len(asked.jobs)}")
    attempts_max = p.settings.job_attempts
    by_pid = {str(s.pid): s for s in fleet}
    spans = []
    for j in jobs:
        short = j["job_id"][:8]
        if j["status"] not in FINISHED:
            bad.append(f"job {short} did not finish: {j['status']}")
            continue
        tries = _tries(j)
        spans += [(a, b, short, n) for a, b, n, _, _ in tries]
        if not 1 <= j["attempts"] == len(tries) <= attempts_max:
            bad.append(f"job {short}: {j['attempts']} attempts, {len(tries)} tries on record")
        for _, end, n, owner, outcome in tries:
            server = by_pid.get(owner.split(":")[1])
            if server is None:
                bad.append(f"job {short} attempt {n}: owner {owner} is none of the servers")
            elif outcome == "stopped" and server.killed_at is None:
                bad.append(f"job {short} attempt {n}: stopped, but {server.name} was not killed")
            elif outcome != "stopped" and server.killed_at and end > server.killed_at:
                bad.append(f"job {short} attempt {n}: ended after {server.name} was killed")
        if any(t[4] != "stopped" for t in tries[:-1]):
            bad.append(f"job {short}: an attempt before its last ended other than stopped")
        last = tries[-1][4] if tries else None
        if last != j["status"] and not (last == "stopped" and j["attempts"] == attempts_max):
            bad.append(f"job {short}: {j['status']}, its last attempt {last}")
    spans.sort()
    overlaps = [
        f"{a[2]} attempt {a[3]} (until {a[1]:%H:%M:%S.%f}) and {b[2]} attempt {b[3]} "
        f"(from {b[0]:%H:%M:%S.%f})"
        for a, b in itertools.pairwise(spans)
        if a[1] > b[0]
    ]
    bad += [f"two attempts at once: {o}" for o in overlaps]
    versions, in_killed_tries = _versions(p, jobs, bad)
    _logs_agree(fleet, jobs, bad)
    counts: dict[str, Counter[str]] = {}
    for j in jobs:
        counts.setdefault(_outcome(j), Counter())[j["kind"]] += 1
    rows = [(o, c["retrain"], c["forget-retrain"]) for o, c in sorted(counts.items())]
    numbers = {
        "jobs": len(jobs),
        "attempts": len(spans),
        "overlapping_attempts": len(overlaps),
        "versions_registered": versions,
        "versions_by_killed_attempts": in_killed_tries,
        "retrain_409s_asked_again": sum(asked.refused.values()),
        "seconds": round(seconds, 1),
    }
    return Report(jobs, rows, killed, bad, numbers)


def _versions(p: Project, jobs: list[dict[str, Any]], bad: list[str]) -> tuple[int, int]:
    """Each version after v1 inside exactly one attempt, of the job whose seed (retrain)
    or audit record (forget-retrain) it carries; a succeeded job's version its last
    attempt's."""
    tries = [(j, t) for j in jobs for t in _tries(j)]
    audits = {e["id"]: e["detail"] for e in p.audit_log("forget")}
    seed = p.settings.seed
    n = in_killed = 0
    for v in p.models():
        if v.version == 1:
            continue
        n += 1
        within = [(j, t) for j, t in tries if t[0] <= v.created_at <= t[1]]
        if len(within) != 1:
            bad.append(f"v{v.version} was registered inside {len(within)} attempts")
            continue
        (j, t) = within[0]
        if t[4] == "stopped":
            in_killed += 1  # the killed attempt got as far as registering
        if j["kind"] == "retrain" and v.training_config.get("seed") != j["params"]["seed"]:
            bad.append(f"v{v.version} has seed {v.training_config.get('seed')}, inside a try of "
                       f"job {j['job_id'][:8]} (seed {j['params']['seed']})")  # fmt: skip
        if j["kind"] == "forget-retrain" and v.training_config.get("seed") != seed:
            bad.append(f"v{v.version}: a forget-retrain trains with the settings' seed")
    for j in jobs:
        r = j["result"] or {}
        mine = r.get("model_version") or (r.get("retrain") or {}).get("version")
        if j["status"] != "succeeded" or mine is None:
            continue
        info = p.version_info(mine)
        last = _tries(j)[-1]
        if not last[0] <= info.created_at <= last[1]:
            bad.append(f"job {j['job_id'][:8]}'s v{mine} is not from its last attempt")
        if j["kind"] == "forget-retrain":
            recorded = (audits.get(j["params"]["audit_id"]) or {}).get("retrain") or {}
            if recorded.get("version") != mine:
                bad.append(f"job {j['job_id'][:8]}: the audit record names another version")
    return n, in_killed


def _logs_agree(fleet: list[Server], jobs: list[dict[str, Any]], bad: list[str]) -> None:
    """Each attempt's start in its owner's log only; its end there too unless killed."""
    starts: Counter[tuple[str, int, str]] = Counter()
    ends: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for s in fleet:
        for line in s.log_path.read_text(errors="replace").splitlines():
            if m := STARTED.search(line):
                starts[(m.group(1), int(m.group(2)), m.group(3))] += 1
            elif m := ENDED.search(line):
                ends.setdefault((m.group(1), int(m.group(2))), []).append((m.group(3), m.group(4)))
    seen = set()
    for j in jobs:
        for t in j["tries"]:
            k = (j["job_id"], t["attempt"], t["owner"])
            seen.add(k)
            if starts[k] != 1:
                bad.append(f"job {j['job_id'][:8]} attempt {t['attempt']}: started "
                           f"{starts[k]} times in {t['owner']}'s log")  # fmt: skip
            got = ends.get((j["job_id"], t["attempt"]), [])
            want = [] if t["outcome"] == "stopped" else [(t["outcome"], t["owner"])]
            if got != want:
                bad.append(f"job {j['job_id'][:8]} attempt {t['attempt']}: the logs end it "
                           f"{got}, the database {want}")  # fmt: skip
    extra = [k for k in starts if k not in seen]
    bad += [f"an attempt in a server's log but not on record: {k}" for k in extra]


def print_report(r: Report, console: Console) -> None:
    t = Table(title="outcomes")
    for col in ("outcome", "retrain", "forget-retrain", "jobs"):
        t.add_column(col, justify="left" if col == "outcome" else "right")
    for outcome, a, b in r.rows:
        t.add_row(outcome, str(a), str(b), str(a + b))
    retrains, forgets = sum(x[1] for x in r.rows), sum(x[2] for x in r.rows)
    t.add_row("all", str(retrains), str(forgets), str(len(r.jobs)))
    console.print(t)
    retried = [j for j in r.jobs if j["attempts"] > 1]
    if retried:
        k = Table(title="attempts of the jobs a kill interrupted")
        for col in ("job", "kind", "attempt", "owner", "started", "ended", "outcome"):
            k.add_column(col)
        for j in retried:
            for tr in j["tries"]:
                k.add_row(
                    j["job_id"][:8], j["kind"], str(tr["attempt"]), tr["owner"],
                    tr["started_at"][11:23], tr["ended_at"][11:23],
                    tr["outcome"] + (f" ({tr['why']})" if tr.get("why") else ""),
                )  # fmt: skip
            if j["status"] == "failed":
                k.add_row("", "", "", "", "", "", f"error: {j['error']}")
        console.print(k)
    console.print(" ".join(f"{k}={v}" for k, v in r.numbers.items()))
    if r.violations:
        console.print(f"[red]{len(r.violations)} violations:[/]")
        for v in r.violations:
            console.print(f"  {v}", soft_wrap=True)
    else:
        console.print(
            "[green]ok:[/] every job ran once or was retried after its worker was killed; "
            "no two attempts at once; every version inside one attempt of its job; the "
            "servers' logs agree"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--kills", type=int, default=1)
    ap.add_argument("--postgres", default=ADMIN_URL, help="a database on the server to use")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", type=Path, default=None, help="keep the project and logs here")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    console = Console(width=None if sys.stdout.isatty() else 150)
    r = check(
        a.postgres, jobs=a.jobs, servers=a.servers, kills=a.kills, timeout_s=a.timeout,
        keep=a.keep, say=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )  # fmt: skip
    print_report(r, console)
    raise SystemExit(1 if r.violations else 0)


if __name__ == "__main__":
    main()
