"""flywheel.client against a real server (uvicorn on a loopback port, started once).

Failures are injected by a transport that wraps httpx's own: it refuses to connect,
answers 429/503 itself, or forwards the request and then loses the answer (dropped, or
a gateway's 502) after the server has committed. The rows are then counted in the store:
feedback is stored exactly once however often it was retried; a predict is never sent
twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

import flywheel
from flywheel import AuthError, ConflictError, InputError, ModelError, NotFoundError, Project
from flywheel.client import (
    APIAuthError,
    APIConflictError,
    APIConnectionError,
    APIError,
    APIInputError,
    APIModelError,
    APINotFoundError,
    APIUnsupportedMediaError,
    AsyncClient,
    Client,
    FeedbackReceipt,
    JobTimeoutError,
    Prediction,
    Retry,
)
from flywheel.serving import BackgroundServer
from flywheel.store.schema import Feedback
from flywheel.store.schema import Prediction as PredictionRow
from tests.factories import digit_png, make_project

LABELS = {str(d) for d in range(10)}
TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "client.py"


@dataclass
class Server:
    project: Project
    url: str
    admin: str  # an admin key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    project = make_project(tmp_path_factory.mktemp("client") / "p")
    admin, _ = project.create_key(["admin"], name="client-admin")
    with BackgroundServer(project) as background:
        yield Server(project, background.url, admin)
    project.close()


def feedback_rows(project: Project, prediction_id: str) -> int:
    with project.db.session() as s:
        q = select(func.count()).select_from(Feedback)
        return int(s.scalar(q.where(Feedback.prediction_id == prediction_id)) or 0)


def prediction_rows(project: Project, user: str) -> int:
    """Predictions logged for ``user`` (an X-User-Id), once the log has caught up."""
    assert project.prediction_log is not None and project.prediction_log.flush()
    with project.db.session() as s:
        q = select(func.count()).select_from(PredictionRow)
        pseudonym = project.pseudonym(user)
        return int(s.scalar(q.where(PredictionRow.user_id == pseudonym)) or 0)


#: what a try meets: None (through), "refuse" (no connection), "busy" / "throttled" (the
#: transport answers 503 / 429 itself, Retry-After 0), "drop" (forwarded, then the
#: connection is lost), "gateway" (forwarded, then a gateway's 502)
Plan = list[str | None]


def _fake(how: str, request: httpx.Request) -> httpx.Response:
    status = {"busy": 503, "throttled": 429}[how]
    return httpx.Response(
        status, headers={"Retry-After": "0"}, json={"detail": f"{how} (injected)"}, request=request
    )


@dataclass
class Flaky(httpx.BaseTransport):
    plan: Plan
    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)
    tries: int = 0
    forwarded: int = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        how = self.plan.pop(0) if self.plan else None
        if how == "refuse":
            raise httpx.ConnectError("connection refused (injected)", request=request)
        if how in ("busy", "throttled"):
            return _fake(how, request)
        response = self.inner.handle_request(request)
        response.read()
        self.forwarded += 1
        if how == "drop":
            raise httpx.ReadError("connection dropped (injected)", request=request)
        if how == "gateway":
            return httpx.Response(502, text="<html>bad gateway</html>", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


@dataclass
class AsyncFlaky(httpx.AsyncBaseTransport):
    plan: Plan
    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)
    tries: int = 0
    forwarded: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        how = self.plan.pop(0) if self.plan else None
        if how == "refuse":
            raise httpx.ConnectError("connection refused (injected)", request=request)
        if how in ("busy", "throttled"):
            return _fake(how, request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        self.forwarded += 1
        if how == "drop":
            raise httpx.ReadError("connection dropped (injected)", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def client(server: Server, plan: Plan | None = None, **kwargs: object) -> tuple[Client, Flaky]:
    transport = Flaky(list(plan or []))
    slept: list[float] = []
    kwargs = {"api_key": server.admin, "rng": random.Random(0), "sleep": slept.append, **kwargs}
    c = Client(server.url, transport=transport, **kwargs)  # type: ignore[arg-type]
    c.slept = slept  # type: ignore[attr-defined]
    return c, transport


# -- the API, call by call ----------------------------------------------------------------


def test_predict_a_file_as_bytes_or_a_path(server: Server, tmp_path: Path) -> None:
    c, _ = client(server)
    with c:
        p = c.predict(digit_png(3), user_id="u-bytes")
        path = tmp_path / "three.png"
        path.write_bytes(digit_png(3))
        q = c.predict(path, user_id="u-bytes")
    assert isinstance(p, Prediction)
    assert p.label in LABELS and p.value is None
    assert p.probabilities is not None and set(p.probabilities) == LABELS
    assert (q.label, q.probabilities) == (p.label, p.probabilities)
    assert p.prediction_id != q.prediction_id
    assert prediction_rows(server.project, "u-bytes") == 2


def test_feedback_is_stored_once_and_a_second_send_of_its_key_is_replayed(
    server: Server,
) -> None:
    c, _ = client(server)
    with c:
        p = c.predict(digit_png(1))
        first = c.feedback(p.prediction_id, label="1", idempotency_key="client-same")
        again = c.feedback(p.prediction_id, label="1", idempotency_key="client-same")
        fresh = c.feedback(p.prediction_id, correct=True)
    assert isinstance(first, FeedbackReceipt)
    assert (first.replayed, again.replayed, fresh.replayed) == (False, True, False)
    assert again.feedback_id == first.feedback_id
    assert fresh.feedback_id != first.feedback_id
    assert len(fresh.idempotency_key) == 36  # a fresh UUID per call
    assert feedback_rows(server.project, p.prediction_id) == 2


def test_a_key_reused_with_another_body_raises_the_conflict(server: Server) -> None:
    c, _ = client(server)
    with c:
        p = c.predict(digit_png(1))
        first = c.feedback(p.prediction_id, label="1", idempotency_key="client-conflict")
        with pytest.raises(APIConflictError) as caught:
            c.feedback(p.prediction_id, label="7", idempotency_key="client-conflict")
    err = caught.value
    assert isinstance(err, ConflictError) and err.status == 409
    assert str(err) == (
        "POST /v1/feedback: 409 Conflict: Idempotency-Key 'client-conflict' was used before "
        f"for another answer (feedback {first.feedback_id}, about prediction "
        f"{p.prediction_id}): a retry must send the same body; a new answer needs a new key"
    )
    assert feedback_rows(server.project, p.prediction_id) == 1


def test_refusals_are_flywheel_errors_with_the_status_and_the_servers_detail(
    server: Server,
) -> None:
    c, _ = client(server)
    keyless, _ = client(server, api_key=None)
    with c, keyless:
        with pytest.raises(APINotFoundError) as not_found:
            c.feedback("no-such-prediction", label="1")
        with pytest.raises(APIAuthError) as no_key:
            keyless.models()
        with pytest.raises(APIUnsupportedMediaError) as wrong_input:
            c.predict({"x": 1.0})  # features, to an image project
        with pytest.raises(APIInputError) as bad_query:
            c.review_queue(limit=0)
        with pytest.raises(APIConflictError) as nothing_before:
            c.rollback()
    assert isinstance(not_found.value, NotFoundError)
    assert str(not_found.value) == (
        "POST /v1/feedback: 404 Not Found: prediction 'no-such-prediction' not found"
    )
    assert isinstance(no_key.value, AuthError) and no_key.value.status == 401
    assert str(no_key.value) == (
        "GET /v1/models: 401 Unauthorized: /v1/models needs an API key: send "
        "'Authorization: Bearer <key>'"
    )
    assert isinstance(wrong_input.value, InputError) and wrong_input.value.status == 415
    assert str(bad_query.value) == (
        "POST /v1/review-queue: 422 Unprocessable Entity: query.limit: Input should be "
        "greater than or equal to 1"
    )
    assert isinstance(bad_query.value.detail, list)  # FastAPI's list, kept whole
    assert isinstance(nothing_before.value, ConflictError)
    assert str(nothing_before.value) == (
        "POST /v1/rollback: 409 Conflict: production v1 has no earlier version to roll back to"
    )
    for err in (not_found, no_key, wrong_input, bad_query, nothing_before):
        assert "\n" not in str(err.value)


def test_models_promote_health_and_the_review_queue(server: Server) -> None:
    c, _ = client(server)
    with c:
        models = c.models()
        production = [m for m in models if "production" in m.aliases]
        promoted = c.promote(production[0].version)
        health = c.health()
        for i in range(1500, 1505):  # digits outside the dataset: labels not known yet
            c.predict(digit_png(i))
        assert server.project.prediction_log is not None
        server.project.prediction_log.flush()
        batch = c.review_queue(limit=3, user_id="reviewer")
    assert [m.version for m in production] == [promoted.version]
    assert "production" in promoted.aliases
    assert health.status == "ok"
    assert health.production_version == health.serving_version == promoted.version
    assert batch.strategy == "margin"
    assert len(batch.items) == 3
    item = batch.items[0]
    assert item.top and all(isinstance(p, float) for _, p in item.top)
    assert item.reason


# -- retries ------------------------------------------------------------------------------


def test_feedback_whose_answer_was_lost_is_retried_and_stored_once(server: Server) -> None:
    """The server committed each of the first three tries; their answers never came back
    (dropped twice, then a gateway's 502). The fourth try is answered with the row the
    first stored."""
    c, flaky = client(server, [None, "drop", "drop", "gateway"])
    with c:
        p = c.predict(digit_png(2))
        receipt = c.feedback(p.prediction_id, label="2")
    assert flaky.tries == 5 and flaky.forwarded == 5  # the predict, then four feedback tries
    assert receipt.replayed
    assert feedback_rows(server.project, p.prediction_id) == 1
    assert len(c.slept) == 3  # type: ignore[attr-defined]


def test_feedback_through_refusals_and_throttling(server: Server) -> None:
    c, flaky = client(server, [None, "refuse", "busy", "throttled"])
    with c:
        p = c.predict(digit_png(2))
        receipt = c.feedback(p.prediction_id, label="2")
    assert flaky.forwarded == 2  # the predict and the fourth feedback try
    assert not receipt.replayed
    assert feedback_rows(server.project, p.prediction_id) == 1
    # the refused connect waits its jittered back-off; 503 and 429 their Retry-After: 0
    assert c.slept == [random.Random(0).uniform(0, 0.5), 0.0, 0.0]  # type: ignore[attr-defined]


def test_a_predict_that_was_sent_is_never_sent_again(server: Server) -> None:
    """Its answer lost after the server logged it: a retry would log a second one."""
    c, flaky = client(server, ["drop"])
    with c, pytest.raises(APIConnectionError) as caught:
        c.predict(digit_png(4), user_id="u-drop")
    assert flaky.tries == 1
    assert caught.value.status is None
    assert str(caught.value) == (
        f"POST /v1/predict: no answer from {server.url}: ReadError: connection dropped "
        "(injected); the request was sent and may have been carried out (not retried: it "
        "is not safe to repeat)"
    )
    assert prediction_rows(server.project, "u-drop") == 1
    c, flaky = client(server, ["gateway"])
    with c, pytest.raises(APIError) as gateway:
        c.predict(digit_png(4), user_id="u-gateway")
    assert gateway.value.status == 502
    assert str(gateway.value) == "POST /v1/predict: 502 Bad Gateway: <html>bad gateway</html>"
    assert prediction_rows(server.project, "u-gateway") == 1


def test_a_predict_that_was_not_carried_out_is_retried(server: Server) -> None:
    c, flaky = client(server, ["refuse", "busy", "throttled"])
    with c:
        p = c.predict(digit_png(6), user_id="u-retried")
    assert flaky.tries == 4 and flaky.forwarded == 1
    assert p.label in LABELS
    assert prediction_rows(server.project, "u-retried") == 1


def test_retries_run_out(server: Server) -> None:
    c, flaky = client(server, ["refuse"] * 10, retries=2)
    with c, pytest.raises(APIConnectionError) as caught:
        c.health()
    assert flaky.tries == 3
    assert str(caught.value).endswith("ConnectError: connection refused (injected) (after 3 tries)")
    rng = random.Random(0)
    assert c.slept == [rng.uniform(0, 0.5), rng.uniform(0, 1.0)]  # type: ignore[attr-defined]


def test_a_request_that_cannot_be_sent_is_not_retried() -> None:
    slept: list[float] = []
    with (
        Client("ftp://fw.test", sleep=slept.append) as c,
        pytest.raises(APIConnectionError) as caught,
    ):
        c.health()
    assert str(caught.value).startswith(
        "GET /healthz: no answer from ftp://fw.test: UnsupportedProtocol"
    )
    assert str(caught.value).endswith("(after 1 try)")
    assert slept == []


def test_a_retry_after_beyond_the_limit_is_not_waited_for(server: Server) -> None:
    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "120"}, json={"detail": "later"})

    slept: list[float] = []
    transport = httpx.MockTransport(busy)
    with (
        Client(server.url, transport=transport, sleep=slept.append) as c,
        pytest.raises(APIModelError) as caught,
    ):
        c.health()
    assert isinstance(caught.value, ModelError)
    assert str(caught.value) == "GET /healthz: 503 Service Unavailable: later"
    assert slept == []


def test_backoff_is_full_jitter_under_a_doubling_bound() -> None:
    policy = Retry(retries=8, backoff=0.5, backoff_max=4.0)
    draws = [policy.delay(a, random.Random(a)) for a in range(1, 9)]
    bounds = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert draws == [
        random.Random(a).uniform(0, b) for a, b in zip(range(1, 9), bounds, strict=True)
    ]
    assert all(0 <= d <= b for d, b in zip(draws, bounds, strict=True))
    assert policy.delay(3, random.Random(0), retry_after=7.0) == 7.0


# -- unit: requests as sent, and reading answers --------------------------------------------


def test_what_each_input_is_sent_as(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"prediction_id": "p", "model_version": 1, "value": 2.5})

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVE")
    with Client("http://fw.test", "fw_key", transport=httpx.MockTransport(record)) as c:
        assert c.predict({"age": 3, "bmi": 1.5}).value == 2.5
        c.predict("some text", user_id="u-1")
        c.predict(digit_png(0))
        c.predict(b"\xff\xd8\xff\xe0 jpeg")
        c.predict(wav)
        c.predict(b"?", content_type="image/png")
        with pytest.raises(TypeError, match=r"predict takes bytes or a pathlib\.Path"):
            c.predict(42)  # type: ignore[arg-type]
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].content == b'{"features":{"age":3.0,"bmi":1.5}}'
    assert seen[1].content == b'{"text":"some text"}'
    assert seen[1].headers["x-user-id"] == "u-1"
    assert "x-user-id" not in seen[0].headers
    types = [r.headers["content-type"] for r in seen[2:]]
    assert types == ["image/png", "image/jpeg", "audio/wav", "image/png"]
    assert all(r.headers["authorization"] == "Bearer fw_key" for r in seen)
    assert all(r.headers["user-agent"].startswith("flywheel-client/") for r in seen)


def test_wait_job_gives_up_at_its_timeout() -> None:
    job = {
        "job_id": "j-1",
        "kind": "retrain",
        "status": "running",
        "params": {},
        "result": None,
        "error": None,
        "created_at": "2026-01-01T00:00:00",
        "started_at": "2026-01-01T00:00:01",
        "finished_at": None,
        "future_field": "ignored",
    }

    def running(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=job)

    with Client("http://fw.test", transport=httpx.MockTransport(running)) as c:
        assert c.job("j-1").status == "running"
        with pytest.raises(
            JobTimeoutError, match=r"job j-1 \(retrain\) is still running after 0 s"
        ):
            c.wait_job("j-1", timeout=0)


def test_a_refusal_without_json_keeps_its_text_on_one_line() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="Internal\nServer   Error")

    transport = httpx.MockTransport(broken)
    with Client("http://fw.test", transport=transport) as c, pytest.raises(APIError) as caught:
        c.models()
    assert type(caught.value) is APIError
    assert str(caught.value) == "GET /v1/models: 500 Internal Server Error: Internal Server Error"


def test_the_client_is_part_of_the_public_api() -> None:
    assert flywheel.Client is Client
    assert flywheel.AsyncClient is AsyncClient


#: in a fresh interpreter, the server's stack made unimportable: the client still works
WITHOUT_THE_SERVER = """
import sys
BLOCKED = {"torch", "numpy", "fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn",
           "PIL", "sklearn", "scipy", "kornia", "safetensors"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
import httpx
from flywheel import Client
from flywheel.client import APINotFoundError
def answer(request):
    if request.url.path == "/healthz":
        return httpx.Response(200, json={"status": "ok", "production_version": 3,
                                         "serving_version": 3})
    return httpx.Response(404, json={"detail": "prediction 'x' not found"})
with Client("http://fw.test", transport=httpx.MockTransport(answer)) as c:
    assert c.health().serving_version == 3
    try:
        c.feedback("x", label="1")
    except APINotFoundError as exc:
        print(exc)
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""


def test_the_client_needs_neither_torch_nor_the_server() -> None:
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_SERVER], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "POST /v1/feedback: 404 Not Found: prediction 'x' not found",
        "[]",
    ]


# -- the async client -----------------------------------------------------------------------


def test_the_async_client_retries_feedback_into_one_row(server: Server) -> None:
    async def run() -> tuple[Prediction, FeedbackReceipt, AsyncFlaky, list[float]]:
        flaky = AsyncFlaky([None, "drop", "refuse", "busy"])
        slept: list[float] = []

        async def sleep(s: float) -> None:
            slept.append(s)

        async with AsyncClient(
            server.url, server.admin, transport=flaky, rng=random.Random(1), sleep=sleep
        ) as c:
            p = await c.predict(digit_png(8), user_id="u-async")
            receipt = await c.feedback(p.prediction_id, label="8", user_id="u-async")
            assert (await c.health()).status == "ok"
            with pytest.raises(APIConflictError):
                await c.feedback(
                    p.prediction_id, label="9", idempotency_key=receipt.idempotency_key
                )
        return p, receipt, flaky, slept

    p, receipt, flaky, slept = asyncio.run(run())
    assert receipt.replayed  # the dropped try had stored it
    assert flaky.forwarded == 5  # predict, feedback (dropped), feedback, health, the conflict
    assert feedback_rows(server.project, p.prediction_id) == 1
    rng = random.Random(1)
    assert slept == [rng.uniform(0, 0.5), rng.uniform(0, 1.0), 0.0]
    assert prediction_rows(server.project, "u-async") == 1


def test_the_async_client_never_resends_a_predict_that_was_sent(server: Server) -> None:
    async def run() -> None:
        async with AsyncClient(server.url, transport=AsyncFlaky(["drop"])) as c:
            await c.predict(digit_png(9), user_id="u-async-drop")

    with pytest.raises(APIConnectionError, match="may have been carried out"):
        asyncio.run(run())
    assert prediction_rows(server.project, "u-async-drop") == 1


# -- jobs (last: a retrain may promote a new version) ---------------------------------------


def test_retrain_and_wait_for_its_job(server: Server) -> None:
    c, _ = client(server, sleep=time.sleep)  # wait_job polls: really wait between polls
    with c:
        p = c.predict(digit_png(7))
        c.feedback(p.prediction_id, label="7")
        job_id = c.retrain(epochs=1, seed=0)
        job = c.wait_job(job_id, timeout=300, poll=0.2)
        listed = c.jobs(limit=5)
    assert job.job_id == job_id and job.kind == "retrain"
    assert job.finished and job.status == "succeeded", job.error
    assert job.result is not None
    assert job_id in [j.job_id for j in listed]


# -- end to end: a `flywheel serve` process ---------------------------------------------------


def test_the_clients_against_flywheel_serve_store_each_answer_once(tmp_path: Path) -> None:
    """benchmarks/client.py, small: both clients against `flywheel serve` (a child
    process), faults injected by call; the store counted after SIGTERM."""
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, str(TOOL), "--n", "24", "--timing-n", "0", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    r = json.loads(out.read_text())
    assert r["verdict"] == "PASS"
    for side in ("sync", "async"):
        assert r[side] == {**r[side], "calls": 24, "replayed": 12, "refused": 12, "dropped": 12}
    assert r["stored_predictions"] == r["expected_predictions"] == 48
    assert r["stored_feedback"] == r["expected_feedback"] == 48
    assert r["server_errors"] == []
