"""A Python client of flywheel's HTTP API (v1): ``Client`` (blocking) and ``AsyncClient``.

    from flywheel import Client

    with Client("http://127.0.0.1:8000", api_key="fw_...") as fw:
        p = fw.predict(Path("cat.png"), user_id="u-42")
        fw.feedback(p.prediction_id, label="dog", user_id="u-42")

It needs httpx only (no torch, no FastAPI, no project): ``pip install flywheel-ml`` and
``import flywheel.client`` is all a product's code needs.

Errors. A refusal (a non-2xx status) raises one of flywheel's errors with the server's
``detail`` in one line, the status in it: 401/403 :class:`APIAuthError` (an
``AuthError``), 404 :class:`APINotFoundError` (``NotFoundError``), 409
:class:`APIConflictError` (``ConflictError``: a reused ``Idempotency-Key``, nothing to
roll back to), 408/413/422 :class:`APIInputError` (``InputError``), 415
:class:`APIUnsupportedMediaError`, 503 :class:`APIModelError` (``ModelError``: no model
yet, shutting down), anything else :class:`APIError`. Every one is an :class:`APIError`
with ``status``, ``detail``, ``method`` and ``url``. A server that cannot be reached
raises :class:`APIConnectionError` (``status`` None).

Retries (``retries``, default 3, after the first try), with exponential back-off and full
jitter (a delay drawn in [0, min(``backoff_max``, ``backoff`` x 2^(try-1))]) or, when the
server sends one, ``Retry-After`` (up to ``retry_after_max`` seconds; longer, the error is
raised at once):

- every request, when nothing was done: the connection could not be made (so the request
  was never sent), or the server answered 429 (throttled) or 503 (no model yet, shutting
  down: refused before any work);
- requests that are safe to repeat, also when the request was sent but no answer came
  (a dropped connection, a read time-out) and on 502/504: every GET, ``promote`` (the
  same version ends up in production), and ``feedback``: each call sends an
  ``Idempotency-Key`` (a fresh UUID unless given), the same on each of its tries, and the
  server stores the answer once and answers a retry with the first answer
  (``FeedbackReceipt.replayed``).
- never, once sent, for ``predict`` (a second try would log a second prediction, and
  the user's answer would be about only one of them), ``rollback`` (it would roll back
  twice), ``retrain`` (a second job once the first started) and ``review_queue`` (it
  records the items it hands out): those raise :class:`APIConnectionError` saying the
  request may have been carried out.

``rng`` (a ``random.Random``) and ``sleep`` are there for tests: seeded, a client's delays
are the same on every run.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from flywheel.errors import (
    AuthError,
    ConflictError,
    FlywheelError,
    InputError,
    ModelError,
    NotFoundError,
    UnsupportedMediaError,
)

__all__ = [
    "APIAuthError",
    "APIConflictError",
    "APIConnectionError",
    "APIError",
    "APIInputError",
    "APIModelError",
    "APINotFoundError",
    "APIUnsupportedMediaError",
    "AsyncClient",
    "Client",
    "FeedbackReceipt",
    "Health",
    "Job",
    "JobTimeoutError",
    "ModelInfo",
    "Prediction",
    "Retry",
    "ReviewBatch",
    "ReviewItem",
    "Rollback",
]

__version__ = "0.1.0"

T = TypeVar("T")

# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """Classification: ``label`` and ``probabilities``; regression: ``value``."""

    prediction_id: str
    model_version: int
    label: str | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None


@dataclass(frozen=True)
class FeedbackReceipt:
    feedback_id: str
    #: the key the answer was sent (and is stored) under
    idempotency_key: str
    #: the server had stored this answer before (an earlier try of the same call)
    replayed: bool = False


@dataclass(frozen=True)
class ReviewItem:
    prediction_id: str
    score: float
    strategy: str
    top: list[tuple[str, float]]  # the top guesses: (label, probability)
    reason: str


@dataclass(frozen=True)
class ReviewBatch:
    strategy: str
    items: list[ReviewItem]


@dataclass(frozen=True)
class ModelInfo:
    version: int
    arch: str
    aliases: list[str]
    metrics: dict[str, Any]
    created_at: str
    parent: int | None
    dataset_version: int
    gate: dict[str, Any] | None
    training_config: dict[str, Any]


@dataclass(frozen=True)
class Rollback:
    from_version: int
    to_version: int


#: a job's statuses after which it does not change
FINISHED = ("succeeded", "failed")


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    status: str  # queued, running, succeeded, failed
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    trigger: str = "manual"
    log: tuple[str, ...] = ()
    progress: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class Health:
    status: str
    production_version: int | None
    serving_version: int | None


def _build(cls: type[T], data: Mapping[str, Any]) -> T:
    """``cls`` from a response's fields, ignoring those it does not know (a newer server)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _job(data: Mapping[str, Any]) -> Job:
    return _build(Job, {**data, "log": tuple(data.get("log") or ())})


def _review(data: Mapping[str, Any]) -> ReviewBatch:
    items = [
        _build(ReviewItem, {**it, "top": [(str(label), float(p)) for label, p in it["top"]]})
        for it in data["items"]
    ]
    return ReviewBatch(strategy=data["strategy"], items=items)


# -- errors -----------------------------------------------------------------------------


class APIError(FlywheelError):
    """The server refused a request (``status``), or could not be reached (None)."""

    def __init__(
        self, message: str, *, status: int | None, detail: Any, method: str, url: str
    ) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url


class APIConnectionError(APIError):
    """No answer came: the server could not be reached, or the connection dropped."""


class APIAuthError(APIError, AuthError):
    """401: no key, or an unknown, revoked or expired one; 403: the key lacks the scope."""

    missing_scope = None


class APINotFoundError(APIError, NotFoundError):
    """404: an unknown prediction, model version or job."""

    kind = "resource"
    ident = None


class APIConflictError(APIError, ConflictError):
    """409: an ``Idempotency-Key`` reused with another body; a registry operation the
    registry's state does not allow (nothing to roll back to, a withdrawn version)."""


class APIInputError(APIError, InputError):
    """408, 413, 422: a malformed, oversized or late request, or an input the model cannot
    take."""

    path = None


class APIUnsupportedMediaError(APIInputError, UnsupportedMediaError):
    """415: a file of a type the project's task does not take."""


class APIModelError(APIError, ModelError):
    """503: no production model yet, or the server is shutting down."""

    version = None


class JobTimeoutError(FlywheelError, TimeoutError):
    """A job did not finish within the time waited for it."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.job_id} ({job.kind}) is still {job.status} after {timeout:g} s")
        self.job = job


_ERRORS: dict[int, type[APIError]] = {
    401: APIAuthError,
    403: APIAuthError,
    404: APINotFoundError,
    408: APIInputError,
    409: APIConflictError,
    413: APIInputError,
    415: APIUnsupportedMediaError,
    422: APIInputError,
    503: APIModelError,
}


def _one_line(detail: Any) -> str:
    """The server's ``detail`` as one line (FastAPI's list of field problems joined)."""
    if isinstance(detail, list):
        parts = []
        for d in detail:
            if isinstance(d, Mapping):
                where = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
                parts.append(f"{where}: {d.get('msg', d)}" if where else str(d.get("msg", d)))
            else:
                parts.append(str(d))
        detail = "; ".join(parts)
    return " ".join(str(detail).split())


def _refusal(response: httpx.Response) -> APIError:
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text[:500]
    request = response.request
    reason = response.reason_phrase or ""
    message = (
        f"{request.method} {request.url.path}: {response.status_code} {reason}".rstrip()
        + f": {_one_line(detail)}"
    )
    cls = _ERRORS.get(response.status_code, APIError)
    return cls(
        message,
        status=response.status_code,
        detail=detail,
        method=request.method,
        url=str(request.url),
    )


# -- retries ----------------------------------------------------------------------------

#: no request was sent: any request may be tried again
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: the request cannot be sent as it is (a bad URL scheme, a header h11 refuses): not
#: sent, and never will be
_UNSENDABLE = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
#: refused before any work was done: any request may be tried again
_NOTHING_DONE = (429, 503)
#: a gateway lost the answer: only safe requests are tried again
_GATEWAY = (502, 504)


@dataclass(frozen=True)
class Retry:
    """When and how long to wait before trying a request again."""

    retries: int = 3  # tries after the first
    backoff: float = 0.5  # the first delay's bound, doubled on each try
    backoff_max: float = 8.0
    retry_after_max: float = 60.0  # a longer Retry-After is not waited for

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """The wait before try ``attempt + 1`` (``attempt`` counts from 1): the server's
        Retry-After if it sent one, else full jitter."""
        if retry_after is not None:
            return retry_after
        return rng.uniform(0.0, min(self.backoff_max, self.backoff * 2 ** (attempt - 1)))


def _retry_after(response: httpx.Response) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date); None: none."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True)
class _Call:
    """One API call: the request, whether it is safe to send again once it was sent, and
    how its answer is read."""

    method: str
    path: str
    read: Callable[[httpx.Response], Any]
    safe: bool
    json: Any = None
    content: bytes | None = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None


def _decide(
    call: _Call, outcome: httpx.Response | httpx.TransportError, attempt: int, policy: Retry
) -> tuple[bool, float | None]:
    """(try again?, the server's Retry-After) for one try's outcome."""
    if attempt > policy.retries:
        return False, None
    if isinstance(outcome, httpx.TransportError):
        if isinstance(outcome, _UNSENDABLE):
            return False, None
        return isinstance(outcome, _NOT_SENT) or call.safe, None
    status = outcome.status_code
    if status in _NOTHING_DONE or (call.safe and status in _GATEWAY):
        after = _retry_after(outcome)
        return after is None or after <= policy.retry_after_max, after
    return False, None


def _unreachable(call: _Call, base: httpx.URL, exc: httpx.TransportError, tries: int) -> APIError:
    sent = not isinstance(exc, _NOT_SENT + _UNSENDABLE)
    why = f"{type(exc).__name__}: {_one_line(str(exc)) or 'no detail'}"
    tail = (
        "; the request was sent and may have been carried out (not retried: it is not safe "
        "to repeat)"
        if sent and not call.safe
        else f" (after {tries} {'try' if tries == 1 else 'tries'})"
    )
    return APIConnectionError(
        f"{call.method} {call.path}: no answer from {base}: {why}{tail}",
        status=None,
        detail=None,
        method=call.method,
        url=f"{str(base).rstrip('/')}{call.path}",
    )


def _answer(call: _Call, response: httpx.Response) -> Any:
    if response.is_success:
        return call.read(response)
    raise _refusal(response)


# -- the calls, shared by both clients --------------------------------------------------

_SNIFF = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"RIFF", "audio/wav"),
)
_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".wav": "audio/wav"}


def _reader(cls: type[T]) -> Callable[[httpx.Response], T]:
    """Reads a response's JSON object as ``cls``."""

    def read(response: httpx.Response) -> T:
        return _build(cls, response.json())

    return read


def _user(user_id: str | None) -> dict[str, str]:
    return {} if user_id is None else {"X-User-Id": user_id}


def _predict(
    data: bytes | Path | str | Mapping[str, float],
    user_id: str | None,
    content_type: str | None,
) -> _Call:
    """Bytes or a ``Path``: a file (image, audio) as the raw body, its type from
    ``content_type``, the file's suffix or its first bytes; ``str``: a text; a mapping: a
    tabular row of features."""
    read = _reader(Prediction)
    headers = _user(user_id)
    if isinstance(data, Mapping):
        body = {"features": {str(k): float(v) for k, v in data.items()}}
        return _Call("POST", "/v1/predict", read, safe=False, json=body, headers=headers)
    if isinstance(data, str):
        return _Call("POST", "/v1/predict", read, safe=False, json={"text": data}, headers=headers)
    if isinstance(data, Path):
        content_type = content_type or _SUFFIXES.get(data.suffix.lower())
        data = data.read_bytes()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            "predict takes bytes or a pathlib.Path (a file), a str (a text) or a mapping "
            f"(features); got {type(data).__name__}"
        )
    content = bytes(data)
    if content_type is None:
        sniffed = [t for magic, t in _SNIFF if content.startswith(magic)]
        content_type = sniffed[0] if sniffed else "application/octet-stream"
    headers = {**headers, "Content-Type": content_type}
    return _Call("POST", "/v1/predict", read, safe=False, content=content, headers=headers)


def _feedback(
    prediction_id: str,
    *,
    label: str | None,
    correct: bool | None,
    value: float | None,
    user_id: str | None,
    idempotency_key: str | None,
) -> _Call:
    key = idempotency_key or str(uuid.uuid4())
    body: dict[str, Any] = {"prediction_id": prediction_id}
    for name, given in (("label", label), ("correct", correct), ("value", value)):
        if given is not None:
            body[name] = given

    def read(r: httpx.Response) -> FeedbackReceipt:
        replayed = r.headers.get("idempotent-replayed", "").lower() == "true"
        return FeedbackReceipt(r.json()["feedback_id"], key, replayed)

    # Safe to send again: the key makes the server store it once.
    headers = {**_user(user_id), "Idempotency-Key": key}
    return _Call("POST", "/v1/feedback", read, safe=True, json=body, headers=headers)


def _review_queue(limit: int, strategy: str | None, spread: bool, user_id: str | None) -> _Call:
    params: dict[str, Any] = {"limit": limit, "spread": str(spread).lower()}
    if strategy is not None:
        params["strategy"] = strategy
    # Not safe: handing items out records them (and makes golden probes among them).
    return _Call(
        "POST",
        "/v1/review-queue",
        lambda r: _review(r.json()),
        safe=False,
        params=params,
        headers=_user(user_id),
    )


def _models() -> _Call:
    return _Call("GET", "/v1/models", lambda r: [_build(ModelInfo, m) for m in r.json()], True)


def _promote(version: int) -> _Call:
    path = f"/v1/models/{int(version)}/promote"
    return _Call("POST", path, _reader(ModelInfo), safe=True)


def _rollback() -> _Call:
    return _Call("POST", "/v1/rollback", _reader(Rollback), safe=False)


def _retrain(epochs: int | None, seed: int | None) -> _Call:
    body = {k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None}
    return _Call("POST", "/v1/retrain", lambda r: str(r.json()["job_id"]), safe=False, json=body)


def _get_job(job_id: str) -> _Call:
    return _Call("GET", f"/v1/jobs/{job_id}", lambda r: _job(r.json()), safe=True)


def _jobs(limit: int) -> _Call:
    def read(r: httpx.Response) -> list[Job]:
        return [_job(j) for j in r.json()["jobs"]]

    return _Call("GET", "/v1/jobs", read, safe=True, params={"limit": limit})


def _health() -> _Call:
    return _Call("GET", "/healthz", _reader(Health), safe=True)


def _client_args(
    base_url: str, api_key: str | None, timeout: float, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    sent = {"User-Agent": f"flywheel-client/{__version__}", **(headers or {})}
    if api_key is not None:
        sent["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url, "timeout": timeout, "headers": sent}


# -- the clients ------------------------------------------------------------------------


class Client:
    """A blocking client of a flywheel server (``base_url``, e.g. http://127.0.0.1:8000).

    ``api_key``: sent as ``Authorization: Bearer``; a loopback server opens predict and
    feedback without one. ``timeout``: seconds per try. ``transport``: an httpx transport
    (tests: ``httpx.MockTransport``, a wrapper that drops answers). A context manager.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        retry_after_max: float = 60.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.retry = Retry(retries, backoff, backoff_max, retry_after_max)
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.http = httpx.Client(
            **_client_args(base_url, api_key, timeout, headers), transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _run(self, call: _Call) -> Any:
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self.http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    content=call.content,
                    params=call.params,
                    headers=call.headers,
                )
            except httpx.TransportError as exc:
                outcome = exc
            again, after = _decide(call, outcome, attempt, self.retry)
            if not again:
                if isinstance(outcome, httpx.TransportError):
                    raise _unreachable(call, self.http.base_url, outcome, attempt) from outcome
                return _answer(call, outcome)
            self.sleep(self.retry.delay(attempt, self.rng, after))

    # -- predictions and answers ---------------------------------------------------------

    def predict(
        self,
        data: bytes | Path | str | Mapping[str, float],
        *,
        user_id: str | None = None,
        content_type: str | None = None,
    ) -> Prediction:
        """Predict from a file (bytes or a ``pathlib.Path``: an image, a WAV), a text
        (``str``) or a tabular row (a mapping of feature to number), for ``user_id``
        (sent as X-User-Id). Retried only when it was never carried out."""
        result: Prediction = self._run(_predict(data, user_id, content_type))
        return result

    def feedback(
        self,
        prediction_id: str,
        *,
        label: str | None = None,
        correct: bool | None = None,
        value: float | None = None,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> FeedbackReceipt:
        """A user's answer about a prediction: the true ``label`` (or regression
        ``value``), or whether it was ``correct``. Sent with an ``Idempotency-Key`` (a
        fresh UUID unless given), so that retries store it once; returns once stored."""
        receipt: FeedbackReceipt = self._run(
            _feedback(
                prediction_id,
                label=label,
                correct=correct,
                value=value,
                user_id=user_id,
                idempotency_key=idempotency_key,
            )
        )
        return receipt

    def review_queue(
        self,
        limit: int = 20,
        *,
        strategy: str | None = None,
        spread: bool = False,
        user_id: str | None = None,
    ) -> ReviewBatch:
        """The predictions most worth an answer from ``user_id`` (needs the feedback
        scope); the items handed out are recorded."""
        batch: ReviewBatch = self._run(_review_queue(limit, strategy, spread, user_id))
        return batch

    # -- models and jobs (an admin key) ----------------------------------------------------

    def models(self) -> list[ModelInfo]:
        found: list[ModelInfo] = self._run(_models())
        return found

    def promote(self, version: int) -> ModelInfo:
        promoted: ModelInfo = self._run(_promote(version))
        return promoted

    def rollback(self) -> Rollback:
        moved: Rollback = self._run(_rollback())
        return moved

    def retrain(self, *, epochs: int | None = None, seed: int | None = None) -> str:
        """Queue a retrain; returns its job id (see :meth:`wait_job`)."""
        job_id: str = self._run(_retrain(epochs, seed))
        return job_id

    def job(self, job_id: str) -> Job:
        found: Job = self._run(_get_job(job_id))
        return found

    def jobs(self, limit: int = 50) -> list[Job]:
        """The newest jobs first."""
        found: list[Job] = self._run(_jobs(limit))
        return found

    def wait_job(self, job_id: str, *, timeout: float = 600.0, poll: float = 1.0) -> Job:
        """The job once it has finished (succeeded or failed: see ``Job.status`` and
        ``Job.error``); :class:`JobTimeoutError` if it has not within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.finished:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobTimeoutError(job, timeout)
            self.sleep(min(poll, left))

    def health(self) -> Health:
        found: Health = self._run(_health())
        return found


class AsyncClient:
    """:class:`Client` for asyncio: the same arguments (``transport``: an async httpx
    transport, ``sleep``: an async function) and the same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        retry_after_max: float = 60.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry = Retry(retries, backoff, backoff_max, retry_after_max)
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.http = httpx.AsyncClient(
            **_client_args(base_url, api_key, timeout, headers), transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _run(self, call: _Call) -> Any:
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self.http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    content=call.content,
                    params=call.params,
                    headers=call.headers,
                )
            except httpx.TransportError as exc:
                outcome = exc
            again, after = _decide(call, outcome, attempt, self.retry)
            if not again:
                if isinstance(outcome, httpx.TransportError):
                    raise _unreachable(call, self.http.base_url, outcome, attempt) from outcome
                return _answer(call, outcome)
            await self.sleep(self.retry.delay(attempt, self.rng, after))

    async def predict(
        self,
        data: bytes | Path | str | Mapping[str, float],
        *,
        user_id: str | None = None,
        content_type: str | None = None,
    ) -> Prediction:
        """As :meth:`Client.predict`."""
        result: Prediction = await self._run(_predict(data, user_id, content_type))
        return result

    async def feedback(
        self,
        prediction_id: str,
        *,
        label: str | None = None,
        correct: bool | None = None,
        value: float | None = None,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> FeedbackReceipt:
        """As :meth:`Client.feedback`."""
        receipt: FeedbackReceipt = await self._run(
            _feedback(
                prediction_id,
                label=label,
                correct=correct,
                value=value,
                user_id=user_id,
                idempotency_key=idempotency_key,
            )
        )
        return receipt

    async def review_queue(
        self,
        limit: int = 20,
        *,
        strategy: str | None = None,
        spread: bool = False,
        user_id: str | None = None,
    ) -> ReviewBatch:
        batch: ReviewBatch = await self._run(_review_queue(limit, strategy, spread, user_id))
        return batch

    async def models(self) -> list[ModelInfo]:
        found: list[ModelInfo] = await self._run(_models())
        return found

    async def promote(self, version: int) -> ModelInfo:
        promoted: ModelInfo = await self._run(_promote(version))
        return promoted

    async def rollback(self) -> Rollback:
        moved: Rollback = await self._run(_rollback())
        return moved

    async def retrain(self, *, epochs: int | None = None, seed: int | None = None) -> str:
        job_id: str = await self._run(_retrain(epochs, seed))
        return job_id

    async def job(self, job_id: str) -> Job:
        found: Job = await self._run(_get_job(job_id))
        return found

    async def jobs(self, limit: int = 50) -> list[Job]:
        found: list[Job] = await self._run(_jobs(limit))
        return found

    async def wait_job(self, job_id: str, *, timeout: float = 600.0, poll: float = 1.0) -> Job:
        """As :meth:`Client.wait_job`."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job.finished:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobTimeoutError(job, timeout)
            await self.sleep(min(poll, left))

    async def health(self) -> Health:
        found: Health = await self._run(_health())
        return found
