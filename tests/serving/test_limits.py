"""Connections held against the server: a request head that never ends, a body sent a
byte at a time, more connections than the cap. Over real sockets to a real uvicorn."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from flywheel import Project
from flywheel.serving import BackgroundServer
from flywheel.settings import Settings
from tests.factories import make_project

#: how long a socket read may wait for the server's move; the limits under test are
#: fractions of it, so reaching it means the server did not act
READ_S = 10.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    root = tmp_path_factory.mktemp("limits") / "p"
    make_project(root).close()
    settings = Settings.load(
        root, header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_s=1, max_connections=4
    )
    project = Project(settings)
    with BackgroundServer(project) as server:
        url = urlsplit(server.url)
        assert url.hostname and url.port
        yield url.hostname, url.port
    project.close()


def _connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=READ_S)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_head_that_never_ends_is_cut_off(served: tuple[str, int]) -> None:
    with _connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert _read_all(sock) == b""  # closed, nothing answered
    with _connect(served) as sock:  # a silent connection too
        assert _read_all(sock) == b""


def test_a_body_that_trickles_in_gets_408(served: tuple[str, int]) -> None:
    with _connect(served) as sock:
        sock.sendall(
            b"POST /v1/feedback HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"prediction'
        )
        answer = _read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"did not arrive within 0.5 s" in body


def test_connections_beyond_the_cap_get_503_until_the_idle_ones_are_cut(
    served: tuple[str, int],
) -> None:
    host, port = served
    idle = [_connect(served) for _ in range(4)]
    try:
        with _connect(served) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _read_all(sock).startswith(b"HTTP/1.1 503 ")
        for sock in idle:  # the server closes each once its head deadline passes
            assert _read_all(sock) == b""
    finally:
        for sock in idle:
            sock.close()
    r = httpx.get(f"http://{host}:{port}/healthz", timeout=READ_S)
    assert r.status_code == 200


def test_a_kept_alive_connection_serves_requests_then_is_closed_when_idle(
    served: tuple[str, int],
) -> None:
    with _connect(served) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 ")
        assert _read_all(sock) == b""  # then idle: closed


def test_the_limits_are_settings_with_bounds(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="header_timeout_s"):
        Settings(project_dir=tmp_path, header_timeout_s=0)
    with pytest.raises(ValidationError, match="max_connections"):
        Settings(project_dir=tmp_path, max_connections=0)


def test_the_access_log_has_a_json_line_per_request_and_no_key_or_user_id(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    from flywheel.serving import create_app
    from tests.factories import digit_png

    project = make_project(tmp_path / "p", settings={"access_log": "logs/access.jsonl"})
    key, _ = project.create_key(["admin"], name="ops-laptop")
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        files = {"file": ("d.png", digit_png(0), "image/png")}
        pid = c.post("/v1/predict", files=files, headers={"X-User-Id": "alice@example.com"})
        c.get("/v1/users/alice@example.com/privacy", headers={"Authorization": f"Bearer {key}"})
        c.get(f"/v1/models?secret={pid.json()['prediction_id']}", headers={"Authorization": "x"})
        c.get("/nowhere")
    log = project.settings.project_dir / "logs" / "access.jsonl"
    assert log.stat().st_mode & 0o777 == 0o600
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(r["method"], r["route"], r["status"], r["key"]) for r in lines] == [
        ("POST", "/v1/predict", 200, None),
        ("GET", "/v1/users/{user_id}/privacy", 200, "ops-laptop"),
        ("GET", "/v1/models", 401, None),
        ("GET", "unmatched", 404, None),
    ]
    assert all(r["latency_ms"] >= 0 and r["client"] == "testclient" for r in lines)
    assert all(
        set(r) == {"time", "method", "route", "status", "latency_ms", "key", "client"}
        for r in lines
    )
    # Never the key, a user id (raw or hashed), a prediction id or a query string.
    for secret in (key, "alice", project.pseudonym("alice@example.com"), "secret"):
        assert secret not in text
    assert pid.json()["prediction_id"] not in text
