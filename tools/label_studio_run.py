"""Label Studio 1.23.2 as flywheel's annotation front end, end to end (issue 16).

    python3 -m venv /work/ls-venv && /work/ls-venv/bin/pip install label-studio==1.23.2
    .venv/bin/python tools/label_studio_run.py [--label-studio /work/ls-venv/bin/label-studio]
        [--tasks 40] [--annotators 5] [--epochs 8] [--timeout 900] [--capture FILE] [--keep DIR]

A flywheel project on the digits default (``flywheel init``, ``train``, ``serve``) and a
Label Studio (SQLite, a temp data dir, bound to 127.0.0.1, a user made at start) run
side by side. Through Label Studio's API the script creates a project with a Choices
config, connects flywheel as its ML backend (``/api/ml``: ``.../label-studio``, Basic
auth, a flywheel key as the password), imports N digits (shifted a pixel: inputs flywheel
has not seen; half inline data: URIs, half uploaded files that flywheel fetches from
Label Studio with a personal access token), asks for pre-annotations (and checks that
Uncertainty sampling serves the lowest score first), gives Label Studio's own webhook an
Authorization header, makes N annotations by five annotators (most from their
pre-annotation, some naming only their parent prediction, a few accepted in bulk),
changes one, deletes one, presses Start Training and waits for the gated retrain. Every
count is checked against flywheel's /v1/stats and Label Studio's /api/predictions; any
mismatch exits 1. Everything started is stopped, and the temp folder removed, at the end
or on error.

``--capture FILE`` puts a recording proxy between Label Studio and flywheel and writes
every request Label Studio sends it (Authorization redacted) and flywheel's answer:
the source of tests/serving/test_label_studio.py's payloads.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from flywheel.data import digits_arrays, encode_png

USER, PASSWORD, TOKEN = "flywheel@example.com", "label-studio-run", "ls-run-token-0123456789"
CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="digit" toName="image" '
    'choice="single" showInLine="true">'
    + "".join(f'<Choice value="{d}"/>' for d in range(10))
    + "</Choices></View>"
)
REPO = Path(__file__).resolve().parents[1]
#: tasks whose pre-annotations are accepted in bulk
BULK = 4


class Failed(Exception):
    """A check did not hold."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)
    print(f"  ok  {what}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Processes:
    """Processes in their own sessions, stopped (the whole group) on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (kept open while it runs)
        p = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.running.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.running):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def wait_until(what: str, ready: Any, deadline: float, proc: Any = None) -> float:
    """Poll ``ready()`` until true; the seconds it took. Fails past ``deadline`` or
    when ``proc`` exits."""
    start = time.monotonic()
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Failed(f"{what}: the process exited ({proc.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            if ready():
                return time.monotonic() - start
        time.sleep(0.5)
    raise Failed(f"{what}: not ready before the deadline")


def new_digits(n: int) -> list[tuple[bytes, str]]:
    """``n`` digits flywheel has not seen: each shifted one pixel right (seed 0)."""
    images, labels = digits_arrays()
    picks = np.random.default_rng(0).choice(len(images), size=n, replace=False)
    return [(encode_png(np.roll(images[i], 1, axis=1)), str(labels[i])) for i in picks]


class Capture:
    """A recording proxy: Label Studio -> here -> flywheel."""

    def __init__(self, upstream: str, out: Path) -> None:
        records: list[dict[str, Any]] = []
        self.records = records
        self.out = out

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                r = httpx.request(
                    self.command, upstream + self.path, headers=headers, content=body, timeout=120
                )
                shown = dict(headers)
                if "Authorization" in shown:
                    shown["Authorization"] = shown["Authorization"].split(" ")[0] + " <redacted>"
                records.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": shown,
                        "body": body.decode("utf-8", "replace"),
                        "status": r.status_code,
                        "answer": r.text,
                    }
                )
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = _relay

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.out.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        print(f"  {len(self.records)} requests of Label Studio's written to {self.out}")


def flywheel_cli(*args: str, env: dict[str, str], deadline: float) -> str:
    argv = [str(REPO / ".venv/bin/flywheel"), *args]
    left = max(1.0, deadline - time.monotonic())
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=left)
    if done.returncode != 0:
        raise Failed(f"flywheel {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def make_flywheel(
    root: Path, epochs: int, deadline: float
) -> tuple[dict[str, str], dict[str, str], float]:
    """A digits project, trained, with three keys; (its keys, its environment, seconds)."""
    env = {**os.environ, "FLYWHEEL_EPOCHS": str(epochs)}
    t = time.monotonic()
    project = root / "flywheel"
    flywheel_cli("init", str(project), "--data", "digits", "--json", env=env, deadline=deadline)
    flywheel_cli("train", "--project", str(project), "--json", env=env, deadline=deadline)
    took = time.monotonic() - t
    keys = {}
    for name, scopes in {"ml-backend": ["predict", "admin"], "webhook": ["feedback"],
                         "script": ["admin"]}.items():  # fmt: skip
        flags = [x for s in scopes for x in ("--scope", s)]
        out = flywheel_cli(
            "keys", "create", *flags, "--name", name, "--project", str(project), "--json",
            env=env, deadline=deadline,
        )  # fmt: skip
        keys[name] = json.loads(out)["key"]
    env["FLYWHEEL_PROJECT_DIR"] = str(project)
    return keys, env, took


def start_label_studio(ps: Processes, exe: str, root: Path, deadline: float) -> tuple[str, float]:
    port = free_port()
    data = root / "label-studio"
    data.mkdir()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "DJANGO_DB": "sqlite",
        # flywheel runs on this machine: let Label Studio reach a loopback ML backend
        # and webhook (it refuses local addresses by default, against SSRF)
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    }
    argv = [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
            "--data-dir", str(data), "--username", USER, "--password", PASSWORD,
            "--user-token", TOKEN]  # fmt: skip
    proc = ps.start("label-studio", argv, env)
    url = f"http://127.0.0.1:{port}"
    took = wait_until(
        "Label Studio", lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200,
        deadline, proc,
    )  # fmt: skip
    return url, took


def connect(ls: httpx.Client, backend: str, key: str) -> tuple[int, int]:
    """A project with the Choices config, flywheel connected as its ML backend."""
    r = ls.post("/api/projects", json={"title": "flywheel digits", "label_config": CONFIG})
    check(r.status_code == 201, f"Label Studio project created ({r.status_code})")
    project = r.json()["id"]
    body = {"project": project, "url": f"{backend}/label-studio", "title": "flywheel",
            "auth_method": "BASIC_AUTH", "basic_auth_user": "label-studio",
            "basic_auth_pass": key}  # fmt: skip
    r = ls.post("/api/ml", json=body)
    ml = r.json()
    check(
        r.status_code == 201 and ml.get("state") == "CO" and ml["model_version"] == "flywheel-v1",
        f"flywheel connected as ML backend: state {ml.get('state')}, model_version "
        f"{ml.get('model_version')!r}",
    )
    return project, ml["id"]


def import_tasks(ls: httpx.Client, project: int, digits: list[tuple[bytes, str]]) -> dict[int, str]:
    """Half the digits inline (data: URIs), half uploaded as files: task id -> label."""
    half = len(digits) // 2
    inline = [{"image": "data:image/png;base64," + base64.b64encode(png).decode(), "truth": lab}
              for png, lab in digits[:half]]  # fmt: skip
    r = ls.post(f"/api/projects/{project}/import", json=inline)
    check(r.json().get("task_count") == half, f"{half} tasks imported inline ({r.status_code})")
    files = [(f"file{i}", (f"digit-{i}-{lab}.png", png, "image/png"))
             for i, (png, lab) in enumerate(digits[half:])]  # fmt: skip
    r = ls.post(f"/api/projects/{project}/import", files=files)
    check(
        r.json().get("task_count") == len(files),
        f"{len(files)} tasks uploaded as files ({r.status_code})",
    )
    tasks = ls.get("/api/tasks", params={"project": project, "page_size": 1000}).json()["tasks"]
    truth = {}
    for t in tasks:
        img = t["data"]["image"]
        if img.startswith("data:"):
            truth[t["id"]] = t["data"]["truth"]
        else:
            truth[t["id"]] = img.rsplit("-", 1)[1].split(".")[0]
    check(len(truth) == len(digits), f"{len(truth)} tasks in Label Studio")
    return truth


def preannotate(ls: httpx.Client, project: int, n: int) -> dict[int, dict[str, Any]]:
    """Ask for predictions of every task (Label Studio calls /predict): task -> prediction."""
    r = ls.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    check(r.status_code == 200, f"pre-annotations asked for: {r.json().get('detail')}")
    preds = ls.get("/api/predictions", params={"project": project}).json()
    by_task = {p["task"]: p for p in preds}
    check(len(by_task) == n, f"{len(by_task)} pre-annotations stored by Label Studio")
    ids = [p["result"][0]["id"] for p in preds]
    check(
        all(p["model_version"] == "flywheel-v1" for p in preds)
        and all(0.0 <= p["score"] <= 1.0 for p in preds)
        and len(set(ids)) == n,
        "each with flywheel's model_version, a review-queue score in [0, 1] and its own "
        "prediction id",
    )
    return by_task


def authorize_webhook(ls: httpx.Client, project: int, backend: str, key: str) -> None:
    """Label Studio made ``<backend>/webhook`` with no header: give it flywheel's key."""
    hooks = ls.get("/api/webhooks", params={"project": project}).json()
    (hook,) = [h for h in hooks if h["url"] == f"{backend}/label-studio/webhook"]
    r = ls.patch(
        f"/api/webhooks/{hook['id']}",
        json={"headers": {"Authorization": f"Bearer {key}"}, "send_for_all_actions": False,
              "actions": ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                          "ANNOTATIONS_DELETED"]},
    )  # fmt: skip
    check(
        r.status_code == 200,
        f"Label Studio's webhook given an Authorization header ({r.status_code})",
    )


def result(pred: dict[str, Any], label: str, *, keep_id: bool) -> list[dict[str, Any]]:
    item = dict(pred["result"][0])
    item["value"] = {"choices": [label]}
    if not keep_id:
        item.pop("id")
    return [item]


def annotators(ls: httpx.Client, n: int) -> list[int]:
    """``n`` annotators in Label Studio's organisation (their user ids)."""
    ids = []
    for i in range(n):
        person = {"email": f"annotator{i}@example.com", "username": f"annotator{i}"}
        r = ls.post("/api/users/", json=person)
        if r.status_code != 201:
            raise Failed(f"annotator {i} not created: {r.status_code} {r.text[:300]}")
        ids.append(r.json()["id"])
    return ids


def uncertainty_first(ls: httpx.Client, project: int, preds: dict[int, dict[str, Any]]) -> None:
    """Label Studio's Uncertainty sampling, on flywheel's model version, serves the task
    whose prediction scores lowest: the one flywheel's review queue ranks first."""
    before = ls.get(f"/api/projects/{project}").json()["model_version"]
    ls.patch(f"/api/projects/{project}",
             json={"sampling": "Uncertainty sampling", "model_version": "flywheel-v1"})  # fmt: skip
    served = ls.get(f"/api/projects/{project}/next/").json()["id"]
    # Back to Label Studio's default (the backend's title): annotations then carry no copy
    # of the prediction shown, and those without a result id name it by parent only,
    # which flywheel asks Label Studio about.
    ls.patch(f"/api/projects/{project}", json={"model_version": before})
    lowest = min(preds, key=lambda t: (preds[t]["score"], t))
    check(
        preds[served]["score"] == preds[lowest]["score"],
        f"Uncertainty sampling serves task {served} first: score {preds[served]['score']}, "
        f"the lowest (scores {min(p['score'] for p in preds.values()):.3f}.."
        f"{max(p['score'] for p in preds.values()):.3f})",
    )


def annotate(
    ls: httpx.Client,
    project: int,
    truth: dict[int, str],
    preds: dict[int, dict[str, Any]],
    people: list[int],
) -> dict[int, int]:
    """An annotation per task. The last BULK accept their pre-annotations at once (the
    Data Manager's "Create annotations from predictions": one ANNOTATIONS_CREATED); the
    others, by ``people`` in turn, give the true label, from the pre-annotation (its
    result id kept), every fifth naming only its parent prediction. Task -> annotation
    id; ``truth`` becomes what the annotations say."""
    bulk = sorted(truth)[-BULK:]
    r = ls.post(
        "/api/dm/actions",
        params={"id": "predictions_to_annotations", "project": project},
        json={"selectedItems": {"all": False, "included": bulk}},
    )
    check(
        r.status_code == 200, f"{BULK} pre-annotations accepted at once: {r.json().get('detail')}"
    )
    out = {}
    for task in bulk:
        (ann,) = ls.get(f"/api/tasks/{task}/annotations").json()
        out[task] = ann["id"]
        truth[task] = ann["result"][0]["value"]["choices"][0]
    for i, (task, label) in enumerate(sorted(truth.items())[:-BULK]):
        body = {"result": result(preds[task], label, keep_id=i % 5 != 4),
                "parent_prediction": preds[task]["id"], "lead_time": 2.5,
                "completed_by": people[i % len(people)]}  # fmt: skip
        r = ls.post(f"/api/tasks/{task}/annotations", json=body)
        if r.status_code != 201:
            raise Failed(f"annotation of task {task} refused: {r.status_code} {r.text[:300]}")
        out[task] = r.json()["id"]
    return out


def stats(fw: httpx.Client) -> dict[str, Any]:
    r = fw.get("/v1/stats")
    r.raise_for_status()
    s: dict[str, Any] = r.json()
    return s


def run(args: argparse.Namespace, root: Path, ps: Processes) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    summary: dict[str, Any] = {"tasks": args.tasks, "seconds": {}}
    secs = summary["seconds"]
    print("flywheel: init, train", flush=True)
    keys, env, secs["flywheel init + train"] = make_flywheel(root, args.epochs, deadline)
    print("Label Studio: start", flush=True)
    ls_url, secs["label studio start"] = start_label_studio(ps, args.label_studio, root, deadline)
    ls = httpx.Client(base_url=ls_url, headers={"Authorization": f"Token {TOKEN}"}, timeout=120)
    pat = ls.post("/api/token/").json()["token"]  # flywheel's: a personal access token
    print("flywheel: serve", flush=True)
    port = free_port()
    backend = f"http://127.0.0.1:{port}"
    env |= {"FLYWHEEL_PORT": str(port), "FLYWHEEL_LABEL_STUDIO_URL": ls_url,
            "FLYWHEEL_LABEL_STUDIO_TOKEN": pat}  # fmt: skip
    fw_proc = ps.start(
        "flywheel",
        [str(REPO / ".venv/bin/flywheel"), "serve", "--project", env["FLYWHEEL_PROJECT_DIR"]],
        env,
    )
    fw = httpx.Client(base_url=backend, headers={"Authorization": f"Bearer {keys['script']}"},
                      timeout=120)  # fmt: skip
    secs["flywheel serve start"] = wait_until(
        "flywheel", lambda: fw.get("/healthz").status_code == 200, deadline, fw_proc
    )
    capture = Capture(backend, args.capture) if args.capture else None
    seen_by_ls = capture.url if capture else backend
    try:
        summary |= _loop(args, ls, fw, seen_by_ls, keys, secs, deadline)
    finally:
        if capture is not None:
            capture.close()
    return summary


def _loop(
    args: argparse.Namespace,
    ls: httpx.Client,
    fw: httpx.Client,
    backend: str,
    keys: dict[str, str],
    secs: dict[str, float],
    deadline: float,
) -> dict[str, Any]:
    n = args.tasks
    print("connect, import, pre-annotate", flush=True)
    project, ml_id = connect(ls, backend, keys["ml-backend"])
    truth = import_tasks(ls, project, new_digits(n))
    t = time.monotonic()
    preds = preannotate(ls, project, n)
    secs[f"pre-annotations of {n} tasks"] = time.monotonic() - t
    check(stats(fw)["calls"]["total"] == n, f"{n} predictions logged by flywheel")
    predicted = {task: p["result"][0]["value"]["choices"][0] for task, p in preds.items()}
    uncertainty_first(ls, project, preds)
    authorize_webhook(ls, project, backend, keys["webhook"])
    print("annotate, change, delete", flush=True)
    people = annotators(ls, args.annotators)
    t = time.monotonic()
    anns = annotate(ls, project, truth, preds, people)
    secs[f"{n} annotations (Label Studio -> webhook -> committed)"] = time.monotonic() - t
    fb = stats(fw)["feedback"]
    agreed = sum(truth[k] == predicted[k] for k in truth)
    check(
        fb["total"] == n and fb["agreed"] == agreed,
        f"{fb['total']} feedback rows in flywheel, {fb['agreed']} agreeing with the model",
    )
    check(stats(fw)["calls"]["total"] == n, "each about its pre-annotation (no new prediction)")
    first, second = sorted(anns)[:2]
    wrong = str((int(predicted[first]) + 1) % 10)
    r = ls.patch(
        f"/api/annotations/{anns[first]}",
        json={"result": result(preds[first], wrong, keep_id=True)},
    )
    truth[first] = wrong
    r2 = ls.delete(f"/api/annotations/{anns[second]}")
    del truth[second]
    fb = stats(fw)["feedback"]
    agreed = sum(truth[k] == predicted[k] for k in truth)
    check(
        r.status_code == 200
        and r2.status_code == 204
        and fb["total"] == n - 1
        and fb["agreed"] == agreed,
        f"one annotation changed, one deleted: {fb['total']} rows, {fb['agreed']} agreeing",
    )
    print("Start Training", flush=True)
    t = time.monotonic()
    r = ls.post(f"/api/ml/{ml_id}/train")
    check(r.status_code == 200, f"Start Training pressed ({r.status_code})")
    job = _wait_for_retrain(fw, deadline)
    secs["retrain (Start Training -> gated result)"] = time.monotonic() - t
    res = job.get("result") or {}
    check(job["status"] == "succeeded" and not res.get("skipped"),
          f"retrain job {job['job_id']} ({job['trigger']}): {res.get('feedback_used')} new rows, "
          f"v{res.get('model_version')} {'promoted' if res.get('promoted') else 'kept out'}: "
          f"{res.get('reason')}")  # fmt: skip
    return {
        "feedback": fb,
        "retrain": {k: res.get(k) for k in ("feedback_used", "curation", "model_version",
                                            "promoted", "reason", "accuracy",
                                            "champion_accuracy")},
    }  # fmt: skip


def _wait_for_retrain(fw: httpx.Client, deadline: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        jobs = fw.get("/v1/jobs").json()["jobs"]
        ours = [j for j in jobs if j["trigger"] == "label-studio"]
        if ours:
            found.update(ours[0])
        return bool(ours) and ours[0]["status"] in ("succeeded", "failed")

    wait_until("the retrain job", done, deadline)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label-studio", default="/work/ls-venv/bin/label-studio")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--annotators", type=int, default=5, help="Label Studio users.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds for everything.")
    parser.add_argument("--capture", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="Work here and keep it.")
    args = parser.parse_args()
    if args.tasks < 4:
        parser.error("--tasks: at least 4")
    root = args.keep or Path(tempfile.mkdtemp(prefix="fw-label-studio-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    ps = Processes(root / "logs")
    started = time.monotonic()
    code = 1
    try:
        summary = run(args, root, ps)
        summary["seconds"]["total"] = time.monotonic() - started
        summary["seconds"] = {k: round(v, 2) for k, v in summary["seconds"].items()}
        print(json.dumps(summary, indent=2))
        code = 0
    except Exception as exc:  # a failed check, or anything else: report, then clean up
        print(f"FAILED: {exc!r}", file=sys.stderr)
        for log in sorted((root / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {log.name} (last lines)", *tail, sep="\n", file=sys.stderr)
    finally:
        ps.stop()  # every process started, also on an error or Ctrl-C
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
