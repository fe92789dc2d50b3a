"""Load on the HTTP server over loopback: flywheel's predict and feedback against baselines.

    .venv/bin/python benchmarks/serving.py [--duration 5] [--json results.json]  # ~5 min
    .venv/bin/python benchmarks/serving.py --quick                    # a smoke run (~2 min)
    .venv/bin/python benchmarks/serving.py --serve-args "--workers 2"  # options of `flywheel serve`

Needs `wrk` on PATH (Debian: `apt-get install -y wrk`). wrk runs with one thread and
keep-alive connections; each cell is `--duration` seconds after a `--warmup` run, at 1, 8,
32 and 128 concurrent connections. Every server is a subprocess bound to 127.0.0.1 on a
free port, ready once its health route answers and its processes have gone idle (every
worker loaded), and killed at the end; warnings and errors in its log are printed then.
The versions of python, uvicorn, uvloop, httptools and onnxruntime are printed first
(uvicorn picks uvloop and httptools by itself when they are installed, for every arm run
under it). Arms, all in one run:

- ``noop``: the ceiling of the stack: FastAPI + uvicorn (flywheel's uvicorn settings, one
  worker), an ``async`` route that ignores the body; wrk sends it the same uploads.
- ``read-upload``: the no-op app's route that only reads the multipart upload (what
  flywheel's predict must do before any work): what is left of the ceiling for the rest.
- ``noop-w2``: the same app under `uvicorn.run(..., workers=2)` (otherwise the same
  settings): the ceiling of ``predict-w2``.
- ``naive``: FastAPI + eager PyTorch: the same PNG upload decoded with Pillow, one forward
  per request, no batching, no logging; the production weights of the digits project,
  loaded with `flywheel.registry.load_artifact`.
- ``predict``: `flywheel serve --project DIR --port P [--serve-args]` (logging on: blob,
  prediction row, metrics) on a digits project (the digits default, ``seed_cnn`` at 8x8)
  trained for `--epochs`; `POST /v1/predict` with 8x8 digit PNGs (256 taken in turn).
- ``predict-raw``: the same server and images, each PNG sent as the whole body
  (``Content-Type: image/png``, no multipart).
- ``predict-w2``: as ``predict`` (multipart), on `flywheel serve ... --workers 2` (after
  `--serve-args`, so it wins), started once the 1-worker server has stopped. wrk's thread
  takes a core of its own: on a 2-core machine the two workers share what is left.
- ``cifar``: the same on a ``seed_cnn`` project over cifar10-mini/train (`--cifar-epochs`),
  sent 32x32 JPEGs of its test split (read as 64x64 RGB); skipped with the reason when
  ../shared/datasets/cifar10-mini is absent.
- ``feedback``: `POST /v1/feedback` on the digits server, cycling through `--pool`
  prediction ids made first through `/v1/predict`. Afterwards every acknowledged (2xx)
  answer must be a row of the project's store, counted once the server has stopped: PASS
  when acknowledged <= rows added <= acknowledged + the connections of every wrk run
  (answers in flight when a run stops are committed, but wrk never sees their 2xx).
- ``bentoml``: BentoML serving the digits model's ONNX export (`Project.export`) with ONNX
  Runtime, in a throwaway venv (`--bentoml-venv`, created with pip when missing, never the
  project's); skipped with the install or start error when it cannot run here.

Then the targets of the issue, from the same run: predict / noop at 32 connections
(>= 0.5), predict / naive at 32 (>= 3), feedback / noop at 32 (>= 0.4), and the p99 of
predict at half its best req/s. wrk cannot hold a rate (wrk2 is not packaged), so that run
paces requests itself from its Lua script (`delay()`, a shared schedule of 1/R seconds per
request over max(32, the best cell's) connections; latency counted from the actual send, so
not corrected for coordinated omission); the p99 of the concurrency whose req/s is closest
to half the best is printed beside it. The 2-worker configuration is reported beside
those targets, not in place of them: predict-w2 / noop-w2 and predict-w2 / naive at 32
connections (naive stays one worker), held to the 1-worker figures for reference only.
`--keep DIR` keeps projects, Lua scripts and server logs; `--arms` runs a subset.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, Response, UploadFile
from starlette.datastructures import UploadFile as FormFile

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-mini"
FLYWHEEL = Path(sys.executable).parent / "flywheel"
HOST = "127.0.0.1"
BOUNDARY = "flywheel-bench-7d1c"
ARMS = (
    "noop",
    "read-upload",
    "noop-w2",
    "naive",
    "predict",
    "predict-raw",
    "healthz",
    "v2-bytes",
    "v2-fp32",
    "predict-w2",
    "cifar",
    "feedback",
    "bentoml",
)
TARGETS = {
    "predict_over_noop": 0.5,
    "predict_over_naive": 3.0,
    "feedback_over_noop": 0.4,
    "v2_fp32_over_healthz": 0.5,
}
#: the 2-worker ratios, held to the 1-worker targets for reference (not targets themselves)
W2_REFERENCE = {"w2_predict_over_noop_w2": 0.5, "w2_predict_over_naive": 3.0}
WORKERS_W2 = 2


# -- the servers the baselines run (this file, started again as a subprocess) -----------


def noop_app() -> FastAPI:
    """The ceiling: FastAPI doing nothing with the request."""
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/predict")
    async def predict() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/feedback")
    async def feedback() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/read-upload")
    async def read_upload(request: Request) -> Response:
        # Only what flywheel's route must do before any work: read the multipart file.
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            size = len(await upload.read()) if isinstance(upload, FormFile) else 0
        return Response(b'{"bytes": %d}' % size, media_type="application/json")

    return app


def naive_app(model_dir: Path) -> FastAPI:
    """What one writes by hand: decode the upload, one eager forward, answer. No logging."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from flywheel.registry import load_artifact

    model, spec = load_artifact(model_dir)
    model.eval()
    prep = spec.preprocessing
    mode, size = str(prep["mode"]), (int(prep["width"]), int(prep["height"]))
    labels = [str(v) for v in spec.labels]
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # A plain `def` route (threadpool), as flywheel's own predict route is.
    @app.post("/v1/predict")
    def predict(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        img = Image.open(io.BytesIO(file.file.read())).convert(mode)
        if img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(np.ascontiguousarray(arr))[None]), 1)[0]
        return {
            "label": labels[int(p.argmax())],
            "probabilities": dict(zip(labels, p.tolist(), strict=True)),
        }

    return app


def run_child(kind: str, port: int, model_dir: str | None) -> None:
    import uvicorn

    if kind == "noop-w2":
        # As flywheel.serving.server.serve with --workers: an import string (this file, as a
        # module of its folder) and a factory, one socket shared by the worker processes.
        here = Path(__file__).resolve()
        uvicorn.run(
            f"{here.stem}:noop_app",
            factory=True,
            app_dir=str(here.parent),
            host=HOST,
            port=port,
            workers=WORKERS_W2,
            log_level="warning",
            lifespan="on",
        )
        return
    app = noop_app() if kind == "noop" else naive_app(Path(str(model_dir)))
    # The settings of flywheel.serving.server._config.
    config = uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="on")
    uvicorn.Server(config).run()


BENTO_SERVICE = '''"""BentoML serving a flywheel ONNX bundle (written by benchmarks/serving.py)."""

import json
import os
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort
from PIL import Image

BUNDLE = Path(os.environ["FLYWHEEL_BENCH_BUNDLE"])


@bentoml.service(workers=1, traffic={"timeout": 120})
class Digits:
    def __init__(self) -> None:
        manifest = json.loads((BUNDLE / "manifest.json").read_text())
        spec = json.loads((BUNDLE / manifest["spec"]).read_text())
        self.session = ort.InferenceSession(
            str(BUNDLE / manifest["model"]), providers=["CPUExecutionProvider"]
        )
        prep = spec["preprocessing"]
        self.mode = prep["mode"]
        self.size = (int(prep["width"]), int(prep["height"]))
        self.labels = [str(v) for v in spec["labels"]]

    @bentoml.api
    def predict(self, file: Image.Image) -> dict:
        img = file.convert(self.mode)
        if img.size != self.size:
            img = img.resize(self.size, Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        logits = self.session.run(None, {"input": np.ascontiguousarray(arr[None])})[0][0]
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        return {
            "label": self.labels[int(p.argmax())],
            "probabilities": dict(zip(self.labels, p.tolist())),
        }
'''


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop(server: Server) -> None:
    """End the server's process group (it may have children: bentoml), gently first."""
    if server.proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def group_cpu(pgid: int) -> tuple[int, float]:
    """The processes of a process group and the CPU seconds they have used (from /proc)."""
    n, ticks = 0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After "pid (comm)": state ppid pgrp ... utime (11) stime (12), in clock ticks.
        if len(fields) > 12 and int(fields[2]) == pgid:
            n += 1
            ticks += int(fields[11]) + int(fields[12])
    return n, ticks / os.sysconf("SC_CLK_TCK")


def settle(server: Server, timeout: float = 60.0) -> str:
    """Wait until the server's processes are idle: with several workers one answering the
    health route does not mean the others have loaded."""
    pgid = server.proc.pid
    t0 = time.monotonic()
    n, cpu = group_cpu(pgid)
    quiet = 0
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        n, now = group_cpu(pgid)
        quiet = quiet + 1 if now - cpu < 0.03 else 0
        cpu = now
        if quiet >= 2:
            return f"{n} processes, idle"
    return f"{n} processes, still busy after {timeout:.0f}s"


def log_problems(server: Server) -> None:
    """Print the warnings and errors a server logged (the scratch folder goes away)."""
    try:
        lines = server.log.read_text(errors="replace").splitlines()
    except OSError:
        return
    bad = [ln for ln in lines if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Error:", ln)]
    if bad:
        print(f"  {server.name} log: {len(bad)} warning/error lines of {len(lines)}; last:")
        for ln in bad[-5:]:
            print(f"    {ln[:200]}")


class StartError(RuntimeError):
    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


def start(
    name: str,
    cmd: Sequence[str],
    port: int,
    logs: Path,
    health: str,
    env: dict[str, str] | None,
    cwd: Path | None,
    timeout: float,
) -> Server:
    """Start ``cmd`` in a session of its own; return once ``health`` answers 200."""
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    server = Server(name, proc, f"http://{HOST}:{port}", log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                tail = server.log_tail()
                lines = [ln.strip(" │╭╰─╮╯") for ln in tail.splitlines()]
                last = next((ln for ln in reversed(lines) if ln), "")
                raise StartError(
                    f"{name} exited with {proc.returncode} before it was ready ({last}):\n{tail}",
                    proc.returncode,
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f}s:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(server.url + health, timeout=2) as r:
                    if r.status == 200:
                        return server
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
    except BaseException:
        stop(server)
        raise


@contextmanager
def serving(
    name: str,
    cmd: Sequence[str],
    port: int,
    logs: Path,
    health: str = "/healthz",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180.0,
    retry_after: float = 0.0,
) -> Iterator[Server]:
    """A started server (one more try after ``retry_after`` s if set), always stopped."""
    try:
        server = start(name, cmd, port, logs, health, env, cwd, timeout)
    except RuntimeError as exc:
        # Exit status 2 is a usage error (bad --serve-args): trying again will not help.
        if not retry_after or getattr(exc, "returncode", None) == 2:
            raise
        print(f"  {name} did not start ({first_line(exc)}); retrying in {retry_after:.0f}s")
        time.sleep(retry_after)
        server = start(name, cmd, port, logs, health, env, cwd, timeout)
    try:
        print(f"  {name} ready: {settle(server)}", flush=True)
        yield server
    finally:
        stop(server)
        log_problems(server)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


# -- wrk -------------------------------------------------------------------------------


def lua_string(data: bytes) -> str:
    """A Lua string literal of arbitrary bytes (three-digit escapes outside plain ASCII)."""
    out = []
    for b in data:
        c = chr(b)
        if 32 <= b < 127 and c not in '\\"':
            out.append(c)
        else:
            out.append(f"\\{b:03d}")
    return '"' + "".join(out) + '"'


def multipart(content: bytes, filename: str = "input.png") -> bytes:
    kind = "image/jpeg" if filename.lower().endswith((".jpg", ".jpeg")) else "image/png"
    return (
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {kind}\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@dataclass
class Requests:
    """What wrk sends: one path and content type, bodies taken in turn."""

    path: str
    content_type: str
    bodies: list[bytes]
    method: str = "POST"
    #: sent with every request besides the Content-Type
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def uploads(
        cls, images: Sequence[bytes], path: str = "/v1/predict", filename: str = "input.png"
    ) -> Requests:
        if not images:
            raise ValueError("no images to send")
        bodies = [multipart(i, filename) for i in images]
        return cls(path, f"multipart/form-data; boundary={BOUNDARY}", bodies)

    @classmethod
    def raw(
        cls, images: Sequence[bytes], path: str = "/v1/predict", content_type: str = "image/png"
    ) -> Requests:
        """Each image as the whole body (no multipart)."""
        if not images:
            raise ValueError("no images to send")
        return cls(path, content_type, list(images))

    @classmethod
    def get(cls, path: str) -> Requests:
        return cls(path, "", [b""], method="GET")

    @classmethod
    def v2(cls, path: str, tensors: Sequence[tuple[str, list[int], bytes]]) -> Requests:
        """Open Inference Protocol requests with the binary tensor extension: each a
        (datatype, shape, raw data) input named ``input``, after JSON padded to one length
        (one Inference-Header-Content-Length header for them all)."""
        heads = [
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": datatype,
                            "shape": shape,
                            "parameters": {"binary_data_size": len(raw)},
                        }
                    ]
                }
            ).encode()
            for datatype, shape, raw in tensors
        ]
        n = max(len(h) for h in heads)
        bodies = [h.ljust(n) + raw for h, (_, _, raw) in zip(heads, tensors, strict=True)]
        return cls(
            path,
            "application/octet-stream",
            bodies,
            headers={"Inference-Header-Content-Length": str(n)},
        )


LUA = r"""-- generated by benchmarks/serving.py
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } fwb_timespec;
int clock_gettime(int clk_id, fwb_timespec *tp);
]]
local ts = ffi.new("fwb_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local bodies = {
%(bodies)s
}
local headers = { %(headers)s }
local path = %(path)s
local method = %(method)s
local rate = %(rate)s  -- requests per second in all (one wrk thread); 0: closed loop
local reqs, i, slot = {}, 0, nil

function init(args)
  for k, b in ipairs(bodies) do
    reqs[k] = wrk.format(method, path, headers, #b > 0 and b or nil)
  end
end

function request()
  i = i %% #reqs + 1
  return reqs[i]
end

if rate > 0 then
  local interval = 1000 / rate
  -- One schedule for the thread: each request takes the next free slot, never one in the
  -- past (falling behind lowers the rate instead of bursting).
  function delay()
    local t = now_ms()
    if slot == nil or slot < t then slot = t end
    local wait = slot - t
    slot = slot + interval
    return math.floor(wait)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%.0f, "duration_us": %%.0f, "connect": %%.0f, "read": %%.0f, ' ..
    '"write": %%.0f, "status": %%.0f, "timeout": %%.0f, "p50_us": %%.0f, "p90_us": %%.0f, ' ..
    '"p99_us": %%.0f, "max_us": %%.0f, "mean_us": %%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def write_lua(reqs: Requests, folder: Path, name: str, rate: float = 0.0) -> Path:
    headers = {**({"Content-Type": reqs.content_type} if reqs.content_type else {}), **reqs.headers}
    script = LUA % {
        "bodies": ",\n".join(lua_string(b) for b in reqs.bodies),
        "headers": ", ".join(
            f"[{lua_string(k.encode())}] = {lua_string(v.encode())}" for k, v in headers.items()
        ),
        "path": lua_string(reqs.path.encode()),
        "method": lua_string(reqs.method.encode()),
        "rate": repr(float(rate)),
    }
    path = folder / f"{name}.lua"
    path.write_text(script, encoding="latin-1")
    return path


@dataclass
class Cell:
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    requests: int
    non_2xx: int  # wrk's status errors: answers >= 400 (no route here answers 1xx/3xx)
    socket_errors: int  # connect, read, write
    timeouts: int
    duration_s: float
    rate: float | None = None  # the paced run's target, req/s

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx


def wrk(url: str, script: Path, connections: int, duration: float) -> Cell:
    # A long timeout: wrk drops latencies above it from its histogram (and counts them
    # as timeouts), which would bias p99 at 128 connections on a slow server.
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    m = re.search(r"^WRKJSON (\{.*\})$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-800:]}{proc.stderr}")
    r = json.loads(m.group(1))
    seconds = r["duration_us"] / 1e6
    return Cell(
        connections=connections,
        rps=r["requests"] / seconds if seconds else 0.0,
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        mean_ms=r["mean_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        requests=int(r["requests"]),
        non_2xx=int(r["status"]),
        socket_errors=int(r["connect"] + r["read"] + r["write"]),
        timeouts=int(r["timeout"]),
        duration_s=seconds,
    )


@dataclass
class Arm:
    name: str
    what: str
    cells: list[Cell] = field(default_factory=list)
    skipped: str | None = None
    warmup: Cell | None = None
    probes: int = 0  # requests sent once outside wrk (each answered 2xx)

    def at(self, connections: int) -> Cell | None:
        return next((c for c in self.cells if c.connections == connections), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "skipped": self.skipped,
            "cells": [asdict(c) for c in self.cells],
        }


def probe(url: str, reqs: Requests) -> str:
    """Send the first request once; its answer must be a 2xx (what wrk will send works)."""
    req = urllib.request.Request(
        url + reqs.path,
        data=reqs.bodies[0] or None,
        headers={
            **({"Content-Type": reqs.content_type} if reqs.content_type else {}),
            **reqs.headers,
        },
        method=reqs.method,
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return f"{r.status} {r.read().decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise RuntimeError(f"{url}{reqs.path} answered {exc.code}: {body[:300]}") from None


def sweep(
    arm: Arm, url: str, script: Path, connections: Sequence[int], duration: float, warmup: float
) -> None:
    if warmup > 0:
        arm.warmup = wrk(url, script, min(8, max(connections)), warmup)
    for c in connections:
        cell = wrk(url, script, c, duration)
        arm.cells.append(cell)
        print(f"  {arm.name:<12}{c:>5} conns {cell.rps:>9.1f} req/s  p99 {cell.p99_ms:.1f} ms")


# -- projects --------------------------------------------------------------------------


def digits_images() -> tuple[list[bytes], list[str]]:
    from flywheel.data import digits_arrays, encode_png

    images, labels = digits_arrays()
    return [encode_png(im) for im in images], [str(v) for v in labels]


def make_project(root: Path, source: Any, settings: dict[str, Any]) -> Path:
    """A project trained once (its v1 promoted); returns the production artifact folder."""
    from flywheel import Project

    t = time.perf_counter()
    project = Project.init(root, source, settings=settings)
    result = project.train()
    version = project.production_version()
    if version is None:
        raise RuntimeError(f"no production model in {root}: {result.to_json()}")
    info = next(v for v in project.models() if v.version == version)
    project.close()
    print(
        f"  project {root.name}: v{version} ({info.arch}), held-out accuracy "
        f"{info.metrics.get('accuracy', float('nan')):.3f}, {time.perf_counter() - t:.0f}s"
    )
    return Path(info.artifact_dir)


def count_feedback(project_dir: Path) -> int:
    from sqlalchemy import func, select

    from flywheel import Project
    from flywheel.store.schema import Feedback

    project = Project.open(project_dir)
    try:
        with project.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(Feedback)) or 0)
    finally:
        project.close()


def prediction_pool(url: str, images: Sequence[bytes], labels: Sequence[str], n: int) -> Requests:
    """``n`` predictions made through the server; feedback bodies answering them."""
    import httpx

    bodies = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for k in range(n):
            i = k % len(images)
            files = {"file": ("d.png", images[i], "image/png")}
            pid = client.post("/v1/predict", files=files).raise_for_status().json()
            body = {"prediction_id": pid["prediction_id"], "label": labels[i]}
            bodies.append(json.dumps(body).encode())
    return Requests("/v1/feedback", "application/json", bodies)


# -- BentoML, in a venv of its own -----------------------------------------------------


def bentoml_venv(venv: Path, logs: Path) -> tuple[Path | None, str]:
    """The venv's bentoml, installed with pip when missing; or why it cannot be had."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import bentoml, onnxruntime, PIL, numpy; print(bentoml.__version__)"]
    if py.exists():
        r = subprocess.run(check, capture_output=True, text=True)
        if r.returncode == 0:
            return venv / "bin" / "bentoml", f"bentoml {r.stdout.strip()} (existing {venv})"
    print(f"  installing bentoml into {venv} (pip) ...", flush=True)
    log = logs / "bentoml-install.log"
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True
        )
        with log.open("w") as out:
            pip = subprocess.run(
                [str(py), "-m", "pip", "install", "bentoml", "onnxruntime", "pillow", "numpy"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
            )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not create the venv or run pip: {exc}"
    if pip.returncode != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln or "error" in ln]
        return None, f"pip install bentoml failed: {(errors or lines or ['?'])[-1].strip()}"
    r = subprocess.run(check, capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"bentoml installed but does not import: {r.stderr.strip().splitlines()[-1]}"
    return venv / "bin" / "bentoml", f"bentoml {r.stdout.strip()} (installed into {venv})"


# -- the run ---------------------------------------------------------------------------


def table(arms: Sequence[Arm]) -> None:
    print(
        f"\n{'arm':<12}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'requests':>10}{'non-2xx':>9}{'sock err':>9}"
    )
    for arm in arms:
        if arm.skipped:
            print(f"{arm.name:<12}  skipped: {arm.skipped}")
            continue
        for c in arm.cells:
            print(
                f"{arm.name:<12}{c.connections:>6}{c.rps:>10.1f}{c.p50_ms:>9.2f}{c.p99_ms:>9.2f}"
                f"{c.max_ms:>9.1f}{c.requests:>10}{c.non_2xx:>9}{c.socket_errors:>9}"
            )


def ratio(a: Cell | None, b: Cell | None) -> float | None:
    if a is None or b is None or not b.rps:
        return None
    return a.rps / b.rps


@dataclass
class Run:
    """One benchmark run: options, the scratch folder, the arms and what they measured."""

    args: argparse.Namespace
    connections: list[int]
    serve_args: list[str]
    work: Path
    arms: dict[str, Arm]
    paced: Cell | None = None
    feedback_check: dict[str, Any] | None = None
    images: list[bytes] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    load_at_start: float = 0.0  # the 1-minute load average

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def digits_dir(self) -> Path:
        return self.work / "digits-project"

    def sweep(self, arm: Arm, url: str, reqs: Requests) -> None:
        answer = probe(url, reqs)
        arm.probes += 1
        print(f"  {arm.name:<12}one request: {answer[:100]}")
        script = write_lua(reqs, self.work, arm.name)
        sweep(arm, url, script, self.connections, self.args.duration, self.args.warmup)

    def flywheel(self, name: str, project: Path, *extra: str) -> AbstractContextManager[Server]:
        port = free_port()
        cmd = [str(FLYWHEEL), "serve", "--project", str(project), "--host", HOST]
        cmd += ["--port", str(port), *self.serve_args, *extra]
        # Others edit flywheel while this runs: one more try a minute later.
        return serving(name, cmd, port, self.logs, retry_after=60.0)

    def child(self, kind: str, *extra: str) -> AbstractContextManager[Server]:
        port = free_port()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
        return serving(kind, [*cmd, "--port", str(port), *extra], port, self.logs)


def arm_noop(run: Run, uploads: Requests) -> None:
    with run.child("noop") as srv:
        run.sweep(run.arms["noop"], srv.url, uploads)


def arm_read_upload(run: Run, images: Sequence[bytes]) -> None:
    with run.child("noop") as srv:
        run.sweep(run.arms["read-upload"], srv.url, Requests.uploads(images, "/v1/read-upload"))


def arm_noop_w2(run: Run, uploads: Requests) -> None:
    with run.child("noop-w2") as srv:
        run.sweep(run.arms["noop-w2"], srv.url, uploads)


def arm_naive(run: Run, uploads: Requests, artifact: Path) -> None:
    with run.child("naive", "--model-dir", str(artifact)) as srv:
        run.sweep(run.arms["naive"], srv.url, uploads)


def arm_predict(run: Run, url: str, uploads: Requests) -> None:
    arm = run.arms["predict"]
    run.sweep(arm, url, uploads)
    best = max(arm.cells, key=lambda c: c.rps)
    rate = best.rps / 2
    lua = write_lua(uploads, run.work, "digits-upload-paced", rate=rate)
    paced = wrk(url, lua, max(32, best.connections), run.args.duration)
    paced.rate = rate
    run.paced = paced
    print(
        f"  {'paced':<12}{paced.connections:>5} conns {paced.rps:>9.1f} req/s "
        f"(target {rate:.1f})  p99 {paced.p99_ms:.1f} ms"
    )


def arm_predict_raw(run: Run, url: str) -> None:
    run.sweep(run.arms["predict-raw"], url, Requests.raw(run.images[:256]))


def arm_healthz(run: Run, url: str) -> None:
    run.sweep(run.arms["healthz"], url, Requests.get("/healthz"))


def v2_tensors(url: str, project_dir: Path, images: Sequence[bytes]) -> tuple[Requests, Requests]:
    """(the encoded PNGs as BYTES, their pixels as FP32 in the model's shape) for the
    served model's /v2 infer, its input shape read from its metadata."""
    import httpx
    import numpy as np

    from flywheel.data import decode_image
    from flywheel.data.images import ImagePreprocessing
    from flywheel.serving.tensors import encode_bytes
    from flywheel.settings import Settings

    name = Settings.load(project_dir).served_name
    meta = httpx.get(f"{url}/v2/models/{name}", timeout=30).raise_for_status().json()
    _, c, h, w = meta["inputs"][0]["shape"]
    prep = ImagePreprocessing("L" if c == 1 else "RGB", h, w)
    path = f"/v2/models/{name}/infer"
    as_bytes = Requests.v2(path, [("BYTES", [1], encode_bytes([im])) for im in images])
    pixels = [decode_image(im, prep)[None].astype(np.float32) for im in images]
    as_fp32 = Requests.v2(path, [("FP32", list(px.shape), px.tobytes()) for px in pixels])
    return as_bytes, as_fp32


def arm_v2(run: Run, url: str, wanted: Sequence[str]) -> None:
    as_bytes, as_fp32 = v2_tensors(url, run.digits_dir, run.images[:256])
    if "v2-bytes" in wanted:
        with guard(run, "v2-bytes"):
            run.sweep(run.arms["v2-bytes"], url, as_bytes)
    if "v2-fp32" in wanted:
        with guard(run, "v2-fp32"):
            run.sweep(run.arms["v2-fp32"], url, as_fp32)


def arm_predict_w2(run: Run, uploads: Requests) -> None:
    workers = ("--workers", str(WORKERS_W2))
    with run.flywheel("flywheel-digits-w2", run.digits_dir, *workers) as srv:
        run.sweep(run.arms["predict-w2"], srv.url, uploads)


def arm_feedback(run: Run, url: str) -> None:
    arm = run.arms["feedback"]
    pool = prediction_pool(url, run.images, run.labels, run.args.pool)
    run.sweep(arm, url, pool)


def check_feedback(run: Run, before: int) -> None:
    """Every acknowledged answer is a row: counted with the server stopped, since answers
    in flight when a wrk run ended may be committed after it (a row, but no 2xx seen)."""
    arm = run.arms["feedback"]
    rows = count_feedback(run.digits_dir) - before
    runs = [c for c in (arm.warmup, *arm.cells) if c is not None]
    acked = sum(c.ok for c in runs) + arm.probes
    in_flight = sum(c.connections for c in runs)
    run.feedback_check = {
        "acknowledged_2xx": acked,
        "rows_added": rows,
        "max_unacknowledged_in_flight": in_flight,
        "pass": acked <= rows <= acked + in_flight,
    }


def arm_cifar(run: Run) -> None:
    arm = run.arms["cifar"]
    if not CIFAR.is_dir():
        arm.skipped = f"{CIFAR} is absent"
        print(f"  cifar skipped: {arm.skipped}")
        return
    from flywheel.data import ImageFolderSource

    cifar_dir = run.work / "cifar-project"
    settings = {"arch": "seed_cnn", "epochs": run.args.cifar_epochs, "patience": 1}
    make_project(cifar_dir, ImageFolderSource(CIFAR / "train"), settings)
    # 256 images spread over the class folders of the test split (JPEG files).
    test = sorted(p for p in (CIFAR / "test").rglob("*") if p.suffix.lower() == ".jpg")
    test = test[:: max(1, len(test) // 256)][:256]
    reqs = Requests.uploads([p.read_bytes() for p in test], filename="input.jpg")
    with run.flywheel("flywheel-cifar", cifar_dir) as srv:
        run.sweep(arm, srv.url, reqs)


def arm_bentoml(run: Run) -> None:
    arm = run.arms["bentoml"]
    bento, why = bentoml_venv(run.args.bentoml_venv, run.logs)
    print(f"  bentoml: {why}")
    if bento is None:
        arm.skipped = why
        return
    from flywheel import Project

    project = Project.open(run.digits_dir)
    try:
        version = project.production_version()
        if version is None:
            raise RuntimeError("the digits project has no production model")
        bundle = run.work / "digits-onnx"
        project.export(version, bundle)
    finally:
        project.close()
    svc = run.work / "bento"
    svc.mkdir(exist_ok=True)
    (svc / "service.py").write_text(BENTO_SERVICE)
    port = free_port()
    cmd = [str(bento), "serve", "service:Digits", "--host", HOST, "--port", str(port)]
    env = {
        "FLYWHEEL_BENCH_BUNDLE": str(bundle),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(run.work / "bentoml-home"),
    }
    reqs = Requests.uploads(run.images[:256], "/predict")
    try:
        with serving("bentoml", cmd, port, run.logs, "/readyz", env, svc) as srv:
            run.sweep(arm, srv.url, reqs)
    except RuntimeError as exc:
        arm.skipped = f"bentoml did not serve: {first_line(exc)}"
        print(f"  bentoml skipped: {arm.skipped}\n{exc}")


@contextmanager
def guard(run: Run, *names: str) -> Iterator[None]:
    """An arm that fails is reported as skipped with the reason; the run goes on."""
    try:
        yield
    except Exception as exc:
        for name in names:
            arm = run.arms[name]
            if not arm.skipped and not arm.cells:
                arm.skipped = f"failed: {first_line(exc)}"
        print(f"  {'/'.join(names)} failed: {exc}", flush=True)


def report(run: Run, wanted: Sequence[str], wrk_version: str, elapsed: float) -> None:
    shown = [run.arms[a] for a in ARMS if a in wanted]
    table(shown)
    k = 32
    noop, naive, predict, feedback, noop_w2, predict_w2, predict_raw = (
        run.arms[a].at(k)
        for a in ("noop", "naive", "predict", "feedback", "noop-w2", "predict-w2", "predict-raw")
    )
    healthz, v2_fp32, v2_bytes = (run.arms[a].at(k) for a in ("healthz", "v2-fp32", "v2-bytes"))
    ratios = {
        "predict_over_noop": ratio(predict, noop),
        "predict_over_naive": ratio(predict, naive),
        "feedback_over_noop": ratio(feedback, noop),
        "v2_fp32_over_healthz": ratio(v2_fp32, healthz),
    }
    w2_ratios = {
        "w2_predict_over_noop_w2": ratio(predict_w2, noop_w2),
        "w2_predict_over_naive": ratio(predict_w2, naive),
    }
    info = {
        "read_upload_over_noop": ratio(run.arms["read-upload"].at(k), noop),
        "predict_over_read_upload": ratio(predict, run.arms["read-upload"].at(k)),
        "predict_raw_over_predict": ratio(predict_raw, predict),
        "predict_raw_over_noop": ratio(predict_raw, noop),
        "predict_w2_over_predict": ratio(predict_w2, predict),
        "noop_w2_over_noop": ratio(noop_w2, noop),
        "healthz_over_noop": ratio(healthz, noop),
        "v2_bytes_over_healthz": ratio(v2_bytes, healthz),
        "v2_bytes_over_predict_raw": ratio(v2_bytes, predict_raw),
        "v2_fp32_over_predict_raw": ratio(v2_fp32, predict_raw),
    }

    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def verdict(value: float | None, target: float) -> str:
        return "-" if value is None else ("met" if value >= target else "NOT met")

    print(f"\ntargets (1 worker: flywheel serve as given, uvicorn no-op 1 worker; {k} conns):")
    for name, value in ratios.items():
        target = TARGETS[name]
        print(f"  {name:<25}{show(value):>8}   target >= {target:g}   {verdict(value, target)}")
    print(
        f"2-worker configuration (flywheel serve --workers {WORKERS_W2} over uvicorn no-op "
        f"workers={WORKERS_W2}; naive stays 1 worker; {k} conns), the 1-worker targets for "
        "reference only:"
    )
    for name, value in w2_ratios.items():
        ref = W2_REFERENCE[name]
        print(f"  {name:<25}{show(value):>8}   (1-worker target >= {ref:g}: {verdict(value, ref)})")
    print(f"other ratios ({k} conns, information):")
    for name, value in info.items():
        print(f"  {name:<25}{show(value):>8}")
    half: dict[str, Any] = {}
    if run.arms["predict"].cells:
        best = max(run.arms["predict"].cells, key=lambda c: c.rps)
        closest = min(run.arms["predict"].cells, key=lambda c: abs(c.rps - best.rps / 2))
        half = {
            "max_rps": best.rps,
            "max_at_connections": best.connections,
            "paced": asdict(run.paced) if run.paced else None,
            "closest_concurrency": asdict(closest),
        }
        print(
            f"  predict p99 at half its max ({best.rps:.1f} req/s at {best.connections} conns"
            f" -> {best.rps / 2:.1f} req/s):"
        )
        if run.paced is not None:
            p = run.paced
            print(
                f"    paced by the Lua schedule, {p.connections} conns: {p.rps:.1f} req/s "
                f"achieved, p50 {p.p50_ms:.2f} ms, p99 {p.p99_ms:.2f} ms"
            )
        print(
            f"    closest concurrency ({closest.connections} conns, {closest.rps:.1f} req/s): "
            f"p50 {closest.p50_ms:.2f} ms, p99 {closest.p99_ms:.2f} ms"
        )
    fc = run.feedback_check
    if fc is not None:
        print(
            f"  feedback durability: {fc['acknowledged_2xx']} acknowledged (2xx, wrk), "
            f"{fc['rows_added']} rows added to the store (up to "
            f"{fc['max_unacknowledged_in_flight']} more may be answers in flight when a wrk "
            f"run stopped): {'PASS' if fc['pass'] else 'FAIL'}"
        )
    print(f"({elapsed:.0f} s; load average {os.getloadavg()[0]:.2f} at the end)")
    if run.args.json:
        run.args.json.write_text(
            json.dumps(
                {
                    "benchmark": "serving",
                    "cpus": os.cpu_count(),
                    "workers_w2": WORKERS_W2,
                    "wrk": wrk_version,
                    "duration_s": run.args.duration,
                    "warmup_s": run.args.warmup,
                    "connections": run.connections,
                    "serve_args": run.serve_args,
                    "arms": {a.name: a.to_json() for a in shown},
                    "ratios_at_32": ratios,
                    "targets": TARGETS,
                    "w2_ratios_at_32": w2_ratios,
                    "w2_reference_targets": W2_REFERENCE,
                    "other_ratios_at_32": info,
                    "versions": versions(),
                    "predict_p99_at_half_max": half,
                    "feedback_check": fc,
                    "seconds": elapsed,
                    "load_average_at_start": run.load_at_start,
                    "load_average_at_end": os.getloadavg()[0],
                },
                indent=2,
            )
        )
        print(f"wrote {run.args.json}")


def versions() -> dict[str, str]:
    """Of this interpreter and the serving stack (the servers run from the same venv)."""
    found = {"python": platform.python_version()}
    for name in ("uvicorn", "uvloop", "httptools", "onnxruntime", "fastapi", "torch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per arm")
    ap.add_argument("--connections", default="1,8,32,128")
    ap.add_argument("--quick", action="store_true", help="1 s cells at 1 and 32 connections")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--epochs", type=int, default=3, help="digits training epochs")
    ap.add_argument("--cifar-epochs", type=int, default=1)
    ap.add_argument("--pool", type=int, default=256, help="prediction ids for feedback")
    ap.add_argument("--serve-args", default="", help="appended to `flywheel serve`")
    ap.add_argument("--bentoml-venv", type=Path, default=Path("/tmp/flywheel-bench-bentoml"))
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument(
        "--keep", type=Path, help="keep projects, scripts and logs in this (new) folder"
    )
    ap.add_argument("--child", choices=("noop", "noop-w2", "naive"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child, args.port, args.model_dir)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found on PATH: `apt-get install -y wrk` (Debian)")
    if args.quick:
        args.duration, args.warmup, args.connections = 1.0, 0.0, "1,32"
        args.epochs, args.pool = 1, 64
    wanted = args.arms.split(",")
    unknown = set(wanted) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms: {', '.join(sorted(unknown))}; known: {', '.join(ARMS)}")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        raise SystemExit(f"--keep {args.keep}: the folder is not empty")
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.strip()
    wrk_version = out.splitlines()[0] if out else "?"
    started = time.perf_counter()
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="fw-serving-"))
    run = Run(
        args=args,
        connections=[int(c) for c in args.connections.split(",")],
        serve_args=shlex.split(args.serve_args),
        work=work,
        arms={
            "noop": Arm("noop", "FastAPI + uvicorn, async route doing nothing (the ceiling)"),
            "read-upload": Arm(
                "read-upload", "the no-op app, a route that only reads the multipart upload"
            ),
            "noop-w2": Arm("noop-w2", f"the no-op app, uvicorn workers={WORKERS_W2}"),
            "naive": Arm("naive", "FastAPI + eager PyTorch, one forward per request, no log"),
            "predict": Arm("predict", "flywheel POST /v1/predict, digits 8x8 PNG, logging on"),
            "predict-raw": Arm(
                "predict-raw", "as predict, the PNG as the raw body (Content-Type: image/png)"
            ),
            "healthz": Arm("healthz", "flywheel GET /healthz, the same server (1 worker)"),
            "v2-bytes": Arm(
                "v2-bytes", "flywheel POST /v2/models/NAME/infer, binary BYTES of the PNG"
            ),
            "v2-fp32": Arm(
                "v2-fp32", "flywheel /v2 infer, binary FP32 pixels in the model's shape"
            ),
            "predict-w2": Arm(
                "predict-w2", f"as predict (multipart), flywheel serve --workers {WORKERS_W2}"
            ),
            "cifar": Arm("cifar", "flywheel POST /v1/predict, cifar10-mini seed_cnn (JPEG)"),
            "feedback": Arm("feedback", "flywheel POST /v1/feedback (digits project)"),
            "bentoml": Arm("bentoml", "BentoML + ONNX Runtime, the digits model's ONNX export"),
        },
    )
    load = run.load_at_start = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.2f} before the run: other work shares the CPUs")
    print(
        f"serving benchmark: {os.cpu_count()} CPUs, {wrk_version}, -t1, "
        f"{args.duration:g}s per cell (+{args.warmup:g}s warm-up per arm), connections "
        f"{run.connections}; flywheel serve args: {run.serve_args or '(none)'}",
        flush=True,
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    try:
        run.logs.mkdir(parents=True, exist_ok=True)
        from flywheel.data import DigitsSource

        run.images, run.labels = digits_images()
        uploads = Requests.uploads(run.images[:256])
        artifact: Path | None = None
        digits_arms = (
            "naive",
            "predict",
            "predict-raw",
            "healthz",
            "v2-bytes",
            "v2-fp32",
            "predict-w2",
            "feedback",
            "bentoml",
        )
        if set(digits_arms) & set(wanted):
            with guard(run, *digits_arms):
                settings = {"epochs": args.epochs, "patience": args.epochs}
                artifact = make_project(run.digits_dir, DigitsSource(), settings)
        if "noop" in wanted:
            with guard(run, "noop"):
                arm_noop(run, uploads)
        if "read-upload" in wanted:
            with guard(run, "read-upload"):
                arm_read_upload(run, run.images[:256])
        if "noop-w2" in wanted:
            with guard(run, "noop-w2"):
                arm_noop_w2(run, uploads)
        if "naive" in wanted and artifact is not None:
            with guard(run, "naive"):
                arm_naive(run, uploads, artifact)
        flywheel_arms = [
            a
            for a in ("predict", "predict-raw", "healthz", "v2-bytes", "v2-fp32", "feedback")
            if a in wanted
        ]
        if flywheel_arms and artifact is not None:
            before = count_feedback(run.digits_dir)
            with guard(run, *flywheel_arms), run.flywheel("flywheel-digits", run.digits_dir) as srv:
                if "predict" in wanted:
                    with guard(run, "predict"):
                        arm_predict(run, srv.url, uploads)
                if "predict-raw" in wanted:
                    with guard(run, "predict-raw"):
                        arm_predict_raw(run, srv.url)
                if "healthz" in wanted:
                    with guard(run, "healthz"):
                        arm_healthz(run, srv.url)
                if {"v2-bytes", "v2-fp32"} & set(wanted):
                    with guard(run, "v2-bytes", "v2-fp32"):
                        arm_v2(run, srv.url, wanted)
                if "feedback" in wanted:
                    with guard(run, "feedback"):
                        arm_feedback(run, srv.url)
            if run.arms["feedback"].cells:
                check_feedback(run, before)
        if "predict-w2" in wanted and artifact is not None:
            # After the 1-worker server has stopped (and the feedback rows were counted).
            with guard(run, "predict-w2"):
                arm_predict_w2(run, uploads)
        if "cifar" in wanted:
            with guard(run, "cifar"):
                arm_cifar(run)
        if "bentoml" in wanted and artifact is not None:
            with guard(run, "bentoml"):
                arm_bentoml(run)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report(run, wanted, wrk_version, time.perf_counter() - started)


if __name__ == "__main__":
    main()
