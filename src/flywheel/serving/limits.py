"""What a request may be, checked in plain ASGI before the app sees it (no
per-request ``@app.middleware`` stack): its body's size, and where it was sent from and
to (the Host header against the names the server answers to, the Origin of a web
page's request against ``cors_origins``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flywheel.settings import Settings, is_loopback

__all__ = ["BodyLimits", "OriginCheck", "served_hosts"]


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def served_hosts(settings: Settings) -> frozenset[str] | None:
    """The host names the server answers to (None: any).

    Its bind address and ``allowed_hosts``; bound to loopback or a wildcard, also the
    loopback names. A wildcard bind without ``allowed_hosts`` answers to any name (every
    route there needs a key, which a rebinding page does not hold); ``'*'`` does too.
    """
    names = set(settings.allowed_hosts)
    bind = settings.host.lower().strip("[]")
    if "*" in names or (bind in WILDCARDS and not names):
        return None
    if bind in WILDCARDS or is_loopback(bind):
        names |= LOOPBACK_NAMES
    if bind not in WILDCARDS:
        names.add(bind)
    return frozenset(names)


def _hostname(value: str) -> str:
    """The name in a Host header or an origin's authority, without its port."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value.rstrip(".")


class OriginCheck:
    """Refuse a request sent to a host name the server does not answer to (421: a page
    that reached it through DNS rebinding) or sent by another site's page (an Origin
    that is neither this server's nor in ``cors_origins``: 403)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, origins: list[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.exact = {h for h in hosts or () if not h.startswith("*.")}
        self.suffixes = tuple(h[1:] for h in hosts or () if h.startswith("*."))
        self.origins = frozenset(origins)

    def _served(self, host: str) -> bool:
        if self.hosts is None or host in self.exact:
            return True
        return any(host.endswith(suffix) for suffix in self.suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self._served(_hostname(host)):
            await _answer(
                send,
                421,
                f"this server does not answer to the host name {_hostname(host)!r}; "
                "add it to allowed_hosts if it is yours",
            )
            return
        origin = headers.get("origin")
        if origin is not None:
            own = origin.lower().partition("://")[2] == host.lower()
            if not own and origin.lower() not in self.origins:
                await _answer(
                    send,
                    403,
                    f"a request from a page of {origin!r} is refused: that origin is not in "
                    "cors_origins",
                )
                return
        await self.app(scope, receive, send)


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BodyLimits:
    """A request's body within ``max_bytes`` (413, by its Content-Length or as it streams
    in) and arrived whole within ``timeout_s`` of its headers (408: a body sent a byte at
    a time holds a connection no longer than that)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self) -> _Refused:
        return _Refused(413, f"request body is larger than the limit of {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    refusal = self._too_large()
                    await _answer(send, refusal.status, refusal.detail)
                    return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        state: dict[str, Any] = {"received": 0, "refused": None, "started": False, "whole": False}

        async def limited_receive() -> Message:
            if state["whole"]:  # the body is in: what is left to wait for is a disconnect
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except TimeoutError:
                state["refused"] = _Refused(
                    408, f"the request body did not arrive within {self.timeout_s:g} s"
                )
                raise state["refused"] from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["whole"] = not message.get("more_body", False)
                if state["received"] > self.max_bytes:
                    state["refused"] = self._too_large()
                    raise state["refused"]
            return message

        async def guarded_send(message: Message) -> None:
            # The framework may turn our exception into its own error response;
            # once a limit was crossed, the answer is ours whatever it says.
            refusal: _Refused | None = state["refused"]
            if refusal is not None:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _answer(send, refusal.status, refusal.detail)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Refused as refusal:
            if not state["started"]:
                state["started"] = True
                await _answer(send, refusal.status, refusal.detail)
