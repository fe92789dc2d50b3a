"""flywheel.client against a real `flywheel serve`, end to end, with answers lost on the way.

    .venv/bin/python benchmarks/client.py [--n 200] [--every 4] [--json out.json]

Makes a digits project in a temporary folder (trained for a few epochs), starts
`flywheel serve --project DIR --port P` as a child process on a free loopback port, and
sends ``--n`` predictions and ``--n`` answers through ``Client`` and as many again through
``AsyncClient`` (8 at a time), through a transport that injects faults by call: of every
``--every`` calls, one predict has its first try refused (a connection error: never sent),
one answer has its first try forwarded and then its connection dropped before the answer
came back (the server has committed it), and one answer its first try refused and its
second dropped. Then the server is stopped (SIGTERM) and the store counted through
``Project.stats``:

- PASS when the store holds exactly the predictions the clients were answered (a predict
  is never sent twice), exactly one answer per ``feedback`` call (every lost answer
  retried under its key, and stored once), exactly as many ``replayed`` receipts as calls
  that had an answer dropped, and the server's log has no error.

Beside it, timings of the same server (sequential, one connection): a ``Client.predict``
against a bare httpx post of the same PNG, and a ``POST /v1/feedback`` with an
``Idempotency-Key`` against one without (the key's look-up in the group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from flywheel import Project
from flywheel.client import AsyncClient, Client
from flywheel.data import HOLDOUT, TRAIN, ListSource, RawExample, digits_arrays, encode_png

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
SETTINGS = {"epochs": 3, "patience": 2, "batch_size": 32, "image_size": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_project(root: Path) -> list[bytes]:
    """A digits project (150 train, 60 held out, v1 in production); returns PNGs of
    digits it was not trained on, to predict."""
    images, labels = digits_arrays()
    examples = [
        RawExample(encode_png(images[i]), str(labels[i]), split=TRAIN if i < 150 else HOLDOUT)
        for i in range(210)
    ]
    project = Project.init(root, ListSource("digits", examples), settings=SETTINGS)
    project.train()
    project.close()
    return [encode_png(images[i]) for i in range(210, len(images))]


#: the call a request belongs to (its kind and number), set by the runs below: a call's
#: tries meet their fates by the call, however the async client's calls interleave
CALL: contextvars.ContextVar[tuple[str, int]] = contextvars.ContextVar("CALL")


class Fates:
    """What each try meets: of every ``every`` calls, one predict has its first try
    refused (never sent), one answer has its first try dropped after the server got it,
    and another its first try refused and its second dropped."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.tries: dict[tuple[str, int], int] = {}
        self.refused = self.dropped = 0

    def __call__(self) -> str | None:
        call = CALL.get(None)
        if call is None:
            return None
        kind, i = call
        n = self.tries[call] = self.tries.get(call, 0) + 1
        fate = None
        if kind == "predict" and i % self.every == 0 and n == 1:
            fate = "refuse"
        elif kind == "feedback" and i % self.every == 1:
            fate = {1: "drop"}.get(n)
        elif kind == "feedback" and i % self.every == 2:
            fate = {1: "refuse", 2: "drop"}.get(n)
        self.refused += fate == "refuse"
        self.dropped += fate == "drop"
        return fate


class Lossy(httpx.BaseTransport):
    def __init__(self, every: int) -> None:
        self.fates = Fates(every)
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fate = self.fates()
        if fate == "refuse":
            raise httpx.ConnectError("refused (injected)", request=request)
        response = self.inner.handle_request(request)
        response.read()
        if fate == "drop":
            raise httpx.ReadError("dropped (injected)", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncLossy(httpx.AsyncBaseTransport):
    def __init__(self, every: int) -> None:
        self.fates = Fates(every)
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fate = self.fates()
        if fate == "refuse":
            raise httpx.ConnectError("refused (injected)", request=request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if fate == "drop":
            raise httpx.ReadError("dropped (injected)", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def start(project_dir: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [FLYWHEEL, "serve", "--project", str(project_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.communicate()[0]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server did not start within 120 s")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return out


def sync_run(url: str, images: list[bytes], n: int, every: int) -> dict[str, int]:
    transport = Lossy(every)
    # Fast back-off (the injected faults clear at once); seeded jitter.
    with Client(url, transport=transport, backoff=0.01, rng=random.Random(0)) as c:
        replayed = 0
        for i in range(n):
            user = f"sync-{i % 7}"
            CALL.set(("predict", i))
            p = c.predict(images[i % len(images)], user_id=user)
            label = p.label if i % 2 else str((int(p.label or 0) + 1) % 10)
            CALL.set(("feedback", i))
            replayed += c.feedback(p.prediction_id, label=label, user_id=user).replayed
    fates = transport.fates
    return {"calls": n, "replayed": replayed, "refused": fates.refused, "dropped": fates.dropped}


async def async_run(url: str, images: list[bytes], n: int, every: int) -> dict[str, int]:
    transport = AsyncLossy(every)
    gate = asyncio.Semaphore(8)
    async with AsyncClient(url, transport=transport, backoff=0.01, rng=random.Random(1)) as c:

        async def one(i: int) -> bool:  # a task of its own: its own CALL
            async with gate:
                user = f"async-{i % 5}"
                CALL.set(("predict", i))
                p = await c.predict(images[(i * 7) % len(images)], user_id=user)
                CALL.set(("feedback", i))
                r = await c.feedback(p.prediction_id, correct=i % 3 != 0, user_id=user)
                return r.replayed

        replayed = sum(await asyncio.gather(*(one(i) for i in range(n))))
    fates = transport.fates
    return {"calls": n, "replayed": replayed, "refused": fates.refused, "dropped": fates.dropped}


def paired(n: int, a: Callable[[int], object], b: Callable[[int], object]) -> tuple[float, float]:
    """Calls per second of ``a`` and of ``b``, taken in turn (a, b, a, b ...) so that both
    meet the same load from whatever else the machine runs; one warm-up call each."""
    a(0), b(0)
    spent = [0.0, 0.0]
    for i in range(n):
        for j, call in enumerate((a, b)):
            t = time.perf_counter()
            call(i)
            spent[j] += time.perf_counter() - t
    return round(n / spent[0], 1), round(n / spent[1], 1)


def timings(url: str, image: bytes, n: int) -> dict[str, float]:
    """Sequential calls per second on one connection: the client against bare httpx,
    feedback with a key against feedback without."""
    out: dict[str, float] = {}
    png = {"Content-Type": "image/png"}
    with httpx.Client(base_url=url, timeout=30) as raw, Client(url) as c:
        ids = [c.predict(image).prediction_id for _ in range(2 * n + 2)]
        out["raw_httpx_predict_per_s"], out["client_predict_per_s"] = paired(
            n,
            lambda i: raw.post("/v1/predict", content=image, headers=png).raise_for_status(),
            lambda i: c.predict(image),
        )

        def plain(i: int) -> None:
            body = {"prediction_id": ids[2 * i], "label": "1"}
            raw.post("/v1/feedback", json=body).raise_for_status()

        def keyed(i: int) -> None:
            body = {"prediction_id": ids[2 * i + 1], "label": "1"}
            key = {"Idempotency-Key": str(uuid.uuid4())}
            raw.post("/v1/feedback", json=body, headers=key).raise_for_status()

        out["feedback_without_key_per_s"], out["feedback_with_key_per_s"] = paired(n, plain, keyed)
    out["client_vs_raw_predict"] = round(
        out["client_predict_per_s"] / out["raw_httpx_predict_per_s"], 3
    )
    out["keyed_vs_plain_feedback"] = round(
        out["feedback_with_key_per_s"] / out["feedback_without_key_per_s"], 3
    )
    return out


def expected_replays(n: int, every: int) -> int:
    """Calls whose answer was dropped once (each is answered, on its retry, as replayed)."""
    return sum(1 for i in range(n) if i % every in (1, 2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="predictions (and answers) per client")
    ap.add_argument("--every", type=int, default=4, help="every k-th try refused / dropped")
    ap.add_argument("--timing-n", type=int, default=200, help="calls per timing (0: none)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fw-client-") as tmp:
        root = Path(tmp) / "project"
        t0 = time.perf_counter()
        images = make_project(root)
        proc, url = start(root)
        started = time.perf_counter()
        try:
            sync = sync_run(url, images, args.n, args.every)
            t_sync = time.perf_counter()
            asyn = asyncio.run(async_run(url, images, args.n, args.every))
            t_async = time.perf_counter()
            timed = timings(url, images[0], args.timing_n) if args.timing_n else {}
        finally:
            log = stop(proc)
        project = Project.open(root)
        stats = project.stats(minutes=24 * 60)
        project.close()
    k = args.timing_n
    # the timings' calls, their warm-ups included: 2k + 2 ids, 2 x (k + 1) predicts;
    # 2 x (k + 1) answers
    expected_predictions = 2 * args.n + (4 * k + 4 if k else 0)
    expected_feedback = 2 * args.n + (2 * k + 2 if k else 0)
    results = {
        "sync": {**sync, "seconds": round(t_sync - started, 2)},
        "async": {**asyn, "seconds": round(t_async - t_sync, 2)},
        "timings": timed,
        "stored_predictions": stats["calls"]["total"],
        "stored_feedback": stats["feedback"]["total"],
        "expected_predictions": expected_predictions,
        "expected_feedback": expected_feedback,
        "setup_seconds": round(started - t0, 1),
        "server_errors": [ln for ln in log.splitlines() if "ERROR" in ln or "Traceback" in ln],
    }
    ok = (
        results["stored_predictions"] == expected_predictions
        and results["stored_feedback"] == expected_feedback
        and sync["replayed"] == expected_replays(args.n, args.every)
        and asyn["replayed"] == expected_replays(args.n, args.every)
        and not results["server_errors"]
    )
    results["verdict"] = "PASS" if ok else "FAIL"
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
