"""Label Studio's ML backend protocol, read and written.

The labelling config says which control tag flywheel answers (a ``Choices`` for a
classifier, a ``Number`` for a regression), on which object tag (``Image``, ``Text``,
``Audio``; any for a regression) and so from which key of a task's data. A task's input
is inline (a ``data:`` URI, a text, feature values) or a URL on Label Studio, fetched from
``label_studio_url`` alone (redirects included) with ``label_studio_token``, under the
server's size limit and a timeout. A pre-annotation carries its logged prediction's id as
its result's ``id``: Label Studio stores it, and copies it into an annotation made from
the prediction, so that the annotation comes back as feedback about that prediction.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx
import numpy as np

from flywheel.data import tabular_bytes
from flywheel.errors import InputError
from flywheel.feedback import queue
from flywheel.feedback.records import PredictionResult
from flywheel.serving.routers.predict import check_format
from flywheel.settings import Settings
from flywheel.tasks import Task

__all__ = [
    "LabelConfig",
    "Media",
    "is_id",
    "model_version",
    "parse_config",
    "pre_annotation",
    "prediction_ids",
    "queue_score",
    "read_answer",
]

log = logging.getLogger("flywheel.serving")

#: the object tags each modality's inputs are shown in
OBJECTS = {"image": {"image"}, "audio": {"audio", "audioplus"}, "text": {"text", "hypertext"}}
#: the modalities whose inputs are files (their type is checked)
FILES = {"image", "audio"}
#: a task's input: inline (declared type, stored form), or where on Label Studio it is
Located = tuple[str, bytes] | str
#: a flywheel prediction id (uuid4), as a result's id
_PREDICTION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MAX_REDIRECTS = 3
#: how long an access token exchanged for a personal access token is reused
ACCESS_TOKEN_S = 60.0


@dataclass(frozen=True)
class LabelConfig:
    """What flywheel answers in a labelling config."""

    control: str  # from_name: the Choices (or Number) tag's name
    kind: str  # the result's type: choices or number
    object: str  # to_name: the object tag's name
    object_type: str  # Image, Text, Audio, ...
    key: str  # the task data key the object shows ($image -> image)
    choices: tuple[str, ...] = ()


def parse_config(xml: str, task: Task) -> LabelConfig:
    """The control tag flywheel answers in ``xml``, for ``task``: the first ``Choices``
    (regression: ``Number``) whose ``toName`` names an object tag of the task's modality.
    A document type or entity is refused (an XML bomb needs one)."""
    if not isinstance(xml, str) or not xml.strip():
        raise InputError("the labelling config is missing or empty")
    if re.search(r"<!(DOCTYPE|ENTITY)", xml, re.IGNORECASE):
        raise InputError("the labelling config may not declare a DOCTYPE or entities")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(f"the labelling config is not XML: {exc}") from None
    objects = {
        el.get("name"): el
        for el in root.iter()
        if el.get("name") and str(el.get("value", "")).startswith("$")
    }
    wanted = "number" if task.is_regression else "choices"
    for el in root.iter():
        if el.tag.lower() != wanted or not el.get("name"):
            continue
        for target in str(el.get("toName", "")).split(","):
            obj = objects.get(target.strip())
            if obj is None or not _shows(task, obj.tag):
                continue
            choices = tuple(str(c.get("value")) for c in el.iter() if c.tag.lower() == "choice")
            key = str(obj.get("value"))[1:]
            return LabelConfig(str(el.get("name")), wanted, target.strip(), obj.tag, key, choices)
    shown = "any object tag" if task.is_regression else _object_names(task)
    raise InputError(
        f"the labelling config has no <{wanted.capitalize()}> tag whose toName is {shown} "
        f"with a $data key: a {task.name} model answers one such tag"
    )


def _shows(task: Task, tag: str) -> bool:
    return task.is_regression or tag.lower() in OBJECTS.get(task.modality, set())


def _object_names(task: Task) -> str:
    return " or ".join(f"<{t.capitalize()}>" for t in sorted(OBJECTS.get(task.modality, ())))


def is_id(value: Any) -> bool:
    """Whether ``value`` is a Label Studio id: an integer a database keeps (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def model_version(version: int) -> str:
    """A model version as Label Studio names it (it asks again when this changes)."""
    return f"flywheel-v{version}"


def queue_score(
    probabilities: dict[str, float] | None, strategy: str, seed: int, pid: str
) -> float | None:
    """The review queue's priority of a prediction (``review_strategy``) as Label Studio
    reads a prediction's score: lower is asked sooner (its Uncertainty sampling serves
    the lowest first). ``1 - priority``, entropy divided by ln K first; None for a value."""
    if not probabilities:
        return None
    p = np.asarray([list(probabilities.values())], dtype=np.float64)
    # The random strategy draws per prediction, not the same number for every one.
    draw = seed ^ int(pid.replace("-", "")[:8], 16) if strategy == "random" else seed
    priority = float(queue.score(p, strategy, seed=draw)[0])
    if strategy == "entropy":
        priority = priority / math.log(p.shape[1]) if p.shape[1] > 1 else 0.0
    return round(1.0 - priority, 6)


def pre_annotation(cfg: LabelConfig, r: PredictionResult, score: float | None) -> dict[str, Any]:
    """A prediction as Label Studio stores it, its result's id the prediction's id."""
    value = {"choices": [r.label]} if cfg.kind == "choices" else {"number": r.value}
    item = {
        "id": r.prediction_id,
        "from_name": cfg.control,
        "to_name": cfg.object,
        "type": cfg.kind,
        "value": value,
    }
    return {"result": [item], "score": score, "model_version": model_version(r.model_version)}


def _items(result: Any) -> list[dict[str, Any]]:
    if result is None:
        return []
    if not isinstance(result, list) or not all(isinstance(i, dict) for i in result):
        raise InputError("an annotation's 'result' must be a list of objects")
    return result


def read_answer(cfg: LabelConfig, result: Any) -> str | float | None:
    """The label (or value) an annotation's result gives flywheel's control tag; None
    when it gives none (skipped, or left empty)."""
    for item in _items(result):
        if item.get("from_name") != cfg.control or str(item.get("type", "")).lower() != cfg.kind:
            continue
        raw = item.get("value")
        value: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if cfg.kind == "number":
            number = value.get("number")
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise InputError(f"the annotation's {cfg.control!r} is not a number: {number!r}")
            if not math.isfinite(number):
                raise InputError(f"the annotation's {cfg.control!r} is not finite: {number!r}")
            return float(number)
        chosen = value.get("choices")
        if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
            raise InputError(f"the annotation's {cfg.control!r} choices are not a list of labels")
        if len(chosen) > 1:
            raise InputError(
                f"the annotation's {cfg.control!r} gives {len(chosen)} labels ({chosen}): "
                "flywheel's models take one per input"
            )
        if chosen:
            return chosen[0]
    return None


def prediction_ids(result: Any) -> list[str]:
    """The flywheel prediction ids a result carries (as its items' ids)."""
    return [
        str(i["id"])
        for i in _items(result)
        if isinstance(i.get("id"), str) and _PREDICTION_ID.fullmatch(i["id"])
    ]


class Media:
    """A task's input, read inline or fetched from Label Studio (and nowhere else)."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings.label_studio_url
        self.token = settings.label_studio_token
        self.limit = settings.max_body_bytes
        self.timeout = settings.label_studio_timeout_s
        self._access: tuple[str, float] | None = None  # (token, when it was exchanged)
        self._exchange = asyncio.Lock()  # one exchange at a time, shared by all fetches

    @asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            yield client

    def locate(self, cfg: LabelConfig, task: Any, kind: Task, columns: Sequence[str]) -> Located:
        """Where a task's input for a ``kind`` model is (``columns``: a regression
        model's features): inline, as (declared type, its stored form), or the address on
        Label Studio to fetch it from. Every refusal that needs no fetch is made here."""
        tid = task.get("id") if isinstance(task, dict) else None
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise InputError(f"task {tid} has no 'data' object")
        if kind.is_regression:  # the object's data when it is an object, else the task's
            inner = data.get(cfg.key)
            row = _features(tid, inner if isinstance(inner, dict) else data, columns)
            return ("", tabular_bytes(row))
        value = data.get(cfg.key)
        if value is None:
            raise InputError(
                f"task {tid}'s data has no {cfg.key!r}, which the {cfg.object_type} tag "
                f'{cfg.object!r} shows (value="${cfg.key}")'
            )
        if not isinstance(value, str) or not value:
            raise InputError(f"task {tid}'s {cfg.key!r} is not a non-empty string")
        if kind.modality == "text":
            return ("", value.encode("utf-8"))
        if value.startswith("data:"):
            return _data_uri(tid, value, self.limit)
        if not value.startswith(("/", "http://", "https://")):
            raise InputError(
                f"task {tid}'s {cfg.key!r} is neither a data: URI nor a URL: {_path(value)[:80]!r}"
            )
        return self._resolve(value)

    async def read(self, client: httpx.AsyncClient, kind: Task, where: Located) -> bytes:
        """The stored form of an input :meth:`locate` found; a file's type is checked."""
        if isinstance(where, tuple) and kind.modality not in FILES:
            return where[1]
        declared, content = where if isinstance(where, tuple) else await self.fetch(client, where)
        check_format(kind.modality, declared, content)
        return content

    async def task_input(
        self,
        client: httpx.AsyncClient,
        cfg: LabelConfig,
        task: Any,
        kind: Task,
        columns: Sequence[str],
    ) -> bytes:
        """The stored form of a task's input (:meth:`locate`, then :meth:`read`)."""
        return await self.read(client, kind, self.locate(cfg, task, kind, columns))

    async def fetch(self, client: httpx.AsyncClient, url: str) -> tuple[str, bytes]:
        """(declared type, bytes) of ``url`` on Label Studio; redirects are followed
        only while they stay there."""
        target = self._resolve(url)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                headers = await self._authorization(client)
                async with client.stream("GET", target, headers=headers) as r:
                    if r.is_redirect:
                        target = self._resolve(urljoin(target, r.headers.get("location", "")))
                        continue
                    if r.status_code != 200:
                        raise InputError(
                            f"Label Studio answered {r.status_code} for {_path(target)}"
                            + (
                                ": is label_studio_token right?"
                                if r.status_code in (401, 403)
                                else ""
                            )
                        )
                    return r.headers.get("content-type", ""), await self._read(r, target)
        except httpx.HTTPError as exc:
            raise InputError(
                f"could not fetch {_path(target)} from Label Studio: {exc!r}"
            ) from None
        raise InputError(f"{_path(url)}: more than {MAX_REDIRECTS} redirects")

    async def prediction_ids(self, client: httpx.AsyncClient, prediction: Any) -> list[str]:
        """The flywheel prediction ids of a Label Studio prediction (by its id), read
        from Label Studio; none when it cannot be asked or does not answer."""
        if self.base is None or not is_id(prediction):
            return []
        try:
            _, body = await self.fetch(client, f"/api/predictions/{prediction}")
            return prediction_ids(json.loads(body).get("result"))
        except (InputError, ValueError, AttributeError) as exc:
            log.info("Label Studio prediction %s not read: %s", prediction, exc)
            return []

    async def _read(self, r: httpx.Response, target: str) -> bytes:
        size = r.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.limit:
            raise InputError(f"{_path(target)} is over {self.limit} bytes (max_body_bytes)")
        chunks, total = [], 0
        async for chunk in r.aiter_bytes():
            total += len(chunk)
            if total > self.limit:
                raise InputError(f"{_path(target)} is over {self.limit} bytes (max_body_bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    def _resolve(self, url: str) -> str:
        """``url`` as an address on Label Studio: a path is taken relative to its root;
        an absolute URL must be on it."""
        if self.base is None:
            raise InputError(
                f"task media {_path(url)!r} is a URL: set label_studio_url (and "
                "label_studio_token) to fetch it from Label Studio; without them only "
                "inline data: URIs are read"
            )
        parts, base = urlsplit(url), urlsplit(self.base)
        if not parts.scheme and not parts.netloc and url.startswith("/"):
            return self.base + url
        if (parts.scheme, parts.hostname, _port(parts)) != (
            base.scheme,
            base.hostname,
            _port(base),
        ):
            raise InputError(
                f"task media {_path(url)!r} is not on Label Studio ({self.base}): flywheel "
                "fetches media from label_studio_url alone"
            )
        return url

    async def _authorization(self, client: httpx.AsyncClient) -> dict[str, str]:
        """Label Studio's Authorization header: a legacy token as it is, a personal
        access token (a JWT) exchanged for a short-lived access token."""
        if self.token is None:
            return {}
        if self.token.count(".") != 2:
            return {"Authorization": f"Token {self.token}"}
        async with self._exchange:
            if self._access is None or time.monotonic() - self._access[1] > ACCESS_TOKEN_S:
                url = f"{self.base}/api/token/refresh/"
                r = await client.post(url, json={"refresh": self.token})
                access = r.json().get("access") if r.status_code == 200 else None
                if not isinstance(access, str):
                    raise InputError(
                        "Label Studio refused label_studio_token (a personal access token): "
                        f"{r.status_code}"
                    )
                self._access = (access, time.monotonic())
            return {"Authorization": f"Bearer {self._access[0]}"}


def _port(parts: Any) -> int | None:
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _path(url: str) -> str:
    """A URL as an error names it: without its query (a signed URL's secrets)."""
    return url.split("?", 1)[0][:200]


def _data_uri(tid: Any, uri: str, limit: int) -> tuple[str, bytes]:
    """(declared type, bytes) of a ``data:`` URI."""
    head, sep, payload = uri.partition(",")
    if not sep:
        raise InputError(f"task {tid}'s data: URI has no ',' before its data")
    declared = head[5:].split(";", 1)[0]
    if len(payload) * 3 // 4 > limit:
        raise InputError(f"task {tid}'s data: URI is over {limit} bytes (max_body_bytes)")
    if head.endswith(";base64"):
        try:
            return declared, base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise InputError(f"task {tid}'s data: URI is not valid base64") from None
    return declared, unquote_to_bytes(payload)


def _features(tid: Any, data: Any, columns: Sequence[str]) -> dict[str, float]:
    """A regression task's features: the model's columns, from the task's data."""
    if not isinstance(data, dict):
        raise InputError(f"task {tid}'s features are not an object of column: number")
    missing = [c for c in columns if c not in data]
    if missing:
        raise InputError(f"task {tid}'s data lacks the model's feature columns {missing}")
    out = {}
    for c in columns:
        v = data[c]
        try:
            number = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise InputError(f"task {tid}'s feature {c!r} is not a finite number: {v!r}")
        out[c] = number
    return out
