"""Webhooks: signed deliveries of what the loop does, retried until a 2xx, refused
toward this machine and private networks unless allowed, each attempt on record."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from flywheel import Project
from flywheel.errors import ConfigError
from flywheel.events import check_url, sign
from flywheel.serving import BackgroundServer
from flywheel.settings import Settings
from flywheel.store.schema import WebhookDelivery, utcnow
from tests.factories import make_project

SECRET = "s3cret-s3cret-s3cret"


class Receiver:
    """A loopback HTTP endpoint answering with the statuses it is given, in turn."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.arrived:
                    outer.got.append((dict(self.headers), body))
                    status = outer.statuses.pop(0) if outer.statuses else 200
                    outer.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 60) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.got) >= n, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([])
    yield r
    r.close()


def _hooked(project_dir: Path, url: str, **extra: Any) -> Project:
    hooks = [{"url": url, "events": extra.pop("events", ["*"]), "secret": SECRET}]
    return Project.open(project_dir, webhooks=hooks, **extra)


def _send(url: str, body: bytes, headers: dict[str, str]) -> int:
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def _due_now(project: Project) -> None:
    """Skip a retry's wait (the backoff itself is checked on its recorded next_at)."""
    with project.db.session() as s:
        s.execute(update(WebhookDelivery).values(next_at=utcnow()))


def test_the_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"event":"model.promoted"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, body) == "sha256=" + expected


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.9", True),
        ("169.254.169.254", True),  # a cloud's metadata service
        ("[::1]", True),
        ("[::ffff:127.0.0.1]", True),
        ("localhost", True),
        ("93.184.216.34", False),
    ],
)
def test_private_addresses_are_refused_unless_allowed(host: str, refused: bool) -> None:
    url = f"https://{host}/hook"
    assert (check_url(url, [], allow_private=False) is not None) is refused
    assert check_url(url, [], allow_private=True) is None
    # A public name that resolves to a private address is refused too (rebinding).
    assert check_url("https://hooks.example.com/x", ["10.0.0.5"], False) is not None


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ({"url": "ftp://example.com/x", "secret": SECRET}, "not an http"),
        ({"url": "https://u:p@example.com/x", "secret": SECRET}, "credentials"),
        ({"url": "https://example.com/x", "secret": "short"}, "at least 16"),
        ({"url": "https://example.com/x", "secret": SECRET, "events": ["nope"]}, "unknown"),
    ],
)
def test_a_bad_webhook_is_refused_with_the_reason(
    tmp_path: Path, hook: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(tmp_path, webhooks=[hook])


def test_events_are_delivered_signed_and_retried_until_a_2xx(tmp_path: Path) -> None:
    make_project(tmp_path / "p").close()
    receiver = Receiver([500, 200])
    project = _hooked(tmp_path / "p", receiver.url, webhook_allow_private=True)
    try:
        v2 = project.train(project.train_config(seed=1)).model.version
        project.promote(v2)
        kinds = [d["event"] for d in project.webhook_deliveries()]
        assert set(kinds) == {"gate.decision", "model.promoted"}
        with project.db.session() as s:
            gate = next(
                d.payload["data"] for d in s.scalars(select(WebhookDelivery))
                if d.event == "gate.decision"
            )  # fmt: skip
        assert gate["model_version"] == v2 and gate["verdict"] in ("pass", "inconclusive", "fail")
        assert set(gate["checks"]) <= {"per_class", "contribution", "trusted_reference"}
        assert project.deliver_webhooks(_send) == len(kinds)
        first = receiver.got[0]
        assert receiver.statuses == [] and len(receiver.got) == len(kinds)
        failed = [d for d in project.webhook_deliveries() if d["status"] == "pending"]
        assert len(failed) == 1 and failed[0]["attempts"] == 1
        assert failed[0]["last_error"] == "HTTP 500" and failed[0]["next_at"] > failed[0][
            "created_at"]  # fmt: skip
        assert project.deliver_webhooks(_send) == 0  # not due yet: it waits (backoff)
        _due_now(project)
        assert project.deliver_webhooks(_send) == 1
        assert {d["status"] for d in project.webhook_deliveries()} == {"delivered"}
        headers, body = first
        payload = json.loads(body)
        assert headers["X-Flywheel-Event"] == payload["event"]
        assert headers["X-Flywheel-Delivery"] == payload["id"]
        ts = int(headers["X-Flywheel-Timestamp"])
        assert headers["X-Flywheel-Signature"] == sign(SECRET, ts, body)
        # The retry repeats the same delivery id: a receiver can drop what it has.
        assert json.loads(receiver.got[-1][1])["id"] == failed[0]["id"]
    finally:
        project.close()
        receiver.close()


def test_a_hook_to_this_machine_is_not_sent_without_the_setting(
    tmp_path: Path, receiver: Receiver
) -> None:
    make_project(tmp_path / "p").close()
    project = _hooked(tmp_path / "p", receiver.url, events=["model.rolled_back"])
    try:
        v2 = project.train(project.train_config(seed=1)).model.version
        project.promote(v2)
        assert project.webhook_deliveries() == []  # it wants rollbacks only
        project.rollback()
        assert project.deliver_webhooks(_send) == 1
        assert receiver.got == []
        (d, *_) = project.webhook_deliveries()
        assert d["status"] == "failed" and d["last_error"].startswith("refused: 127.0.0.1")
    finally:
        project.close()


def test_the_server_delivers_a_rollback_and_a_retrain(tmp_path: Path, receiver: Receiver) -> None:
    seed = make_project(tmp_path / "p")
    seed.train(seed.train_config(seed=1))
    if seed.production_version() == 1:
        seed.promote(2)
    key, _ = seed.create_key(["admin"])
    seed.close()
    project = _hooked(tmp_path / "p", receiver.url, webhook_allow_private=True)
    admin = {"Authorization": f"Bearer {key}"}
    try:
        with BackgroundServer(project) as server, httpx.Client(base_url=server.url) as c:
            assert c.post("/v1/rollback", headers=admin).status_code == 200
            assert receiver.wait_for(1)
            events = [json.loads(b)["event"] for _, b in receiver.got]
            assert events == ["model.rolled_back"]
            assert json.loads(receiver.got[0][1])["data"]["to_version"] == 1
            job = c.post("/v1/retrain", headers=admin).json()["job_id"]
            assert receiver.wait_for(3)
            got = [json.loads(b) for _, b in receiver.got[1:]]
            assert [g["event"] for g in got] == ["retrain.queued", "retrain.finished"]
            assert {g["data"]["job_id"] for g in got} == {job}
            assert got[1]["data"]["status"] == "succeeded"  # nothing new: skipped, not failed
    finally:
        project.close()


def test_a_forget_is_told_without_the_user(tmp_path: Path) -> None:
    from tests.factories import digit_png

    make_project(tmp_path / "p").close()
    project = _hooked(tmp_path / "p", "https://hooks.example.com/x", events=["user.forgotten"])
    try:
        project.predict(digit_png(3), user_id="alice")
        pseudonym = project.pseudonym("alice")
        project.forget("alice", retrain=False)
        (d,) = project.webhook_deliveries()
        assert d["event"] == "user.forgotten"
        with project.db.session() as s:
            payload = s.get(WebhookDelivery, d["id"]).payload  # type: ignore[union-attr]
        text = json.dumps(payload)
        assert "alice" not in text and str(pseudonym) not in text
        (audit,) = project.audit_log("forget")
        assert payload["data"]["audit_id"] == audit["id"]
        assert payload["data"]["subject"] == audit["subject"]  # a digest, as in the audit
    finally:
        project.close()
