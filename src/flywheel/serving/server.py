"""Running the app under uvicorn: in the foreground (``flywheel serve``) or in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from flywheel.errors import ConfigError
from flywheel.project import Project
from flywheel.serving.app import create_app
from flywheel.settings import Settings

__all__ = ["BackgroundServer", "bind", "check_can_serve", "serve", "server_log"]


def check_can_serve(project: Project) -> None:
    """Bound beyond loopback, the server refuses to start without an API key to check."""
    st = project.settings
    if st.requires_keys and not project.has_keys():
        raise ConfigError(
            f"refusing to serve on {st.host}: bound beyond loopback every route needs an API key, "
            "and this project has none; create one with `flywheel keys create --scope admin`"
        )


#: how a worker process finds its project (``flywheel serve --workers N``)
WORKER_ENV = "FLYWHEEL_SERVE_SETTINGS"


class GuardedHTTP(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol with a deadline for a request's head: a connection that
    has not sent a whole request line and headers within ``header_timeout`` seconds of
    opening (or of its last answer) is closed. uvicorn has none, so half-sent requests
    would hold connections, and the ``max_connections`` they count against, for good."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        old = getattr(self, "_head_deadline", None)
        if old is not None:
            old.cancel()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._expire, self.cycle)

    def _expire(self, cycle_then: Any) -> None:
        # Still the cycle of before: no request head arrived since the timer was armed.
        if self.cycle is cycle_then and not self.transport.is_closing():
            self.transport.close()


PROTOCOL = f"{__name__}:GuardedHTTP"


def _limits(settings: Settings) -> dict[str, Any]:
    """uvicorn's side of the limits: the protocol with its head deadline, idle keep-alive,
    and the connections (and requests in flight) beyond which it answers 503."""
    GuardedHTTP.header_timeout = settings.header_timeout_s
    return {
        "http": PROTOCOL,
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        # ws="none": the API has no websocket routes (and uvicorn[standard]'s websockets
        # would import its deprecated legacy module at start-up).
        "ws": "none",
        "log_level": "warning",
        "lifespan": "on",
    }


def _config(project: Project, host: str, port: int) -> uvicorn.Config:
    app = create_app(project.settings, project)
    return uvicorn.Config(app, host=host, port=port, **_limits(project.settings))


def worker_app() -> FastAPI:
    """The app of one worker process: its settings come from the parent as JSON."""
    raw = os.environ.get(WORKER_ENV)
    if not raw:
        raise ConfigError(f"{WORKER_ENV} is not set: start workers with `flywheel serve --workers`")
    settings = Settings.load(**json.loads(raw))
    _limits(settings)  # this process's protocol deadline
    return create_app(settings)


class _Foreground(uvicorn.Server):
    """uvicorn's server, except that Ctrl-C after the graceful stop is exit status 130,
    not the SIGINT uvicorn raises again (a KeyboardInterrupt traceback in the terminal).
    SIGTERM is raised again as uvicorn does, for supervisors to see."""

    interrupted = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                if signal.SIGINT in self._captured_signals:
                    self.interrupted = True
                    self._captured_signals[:] = [
                        s for s in self._captured_signals if s != signal.SIGINT
                    ]


def bind(host: str, port: int) -> socket.socket:
    """The listening address, taken before anything slow: a port in use fails at once,
    naming what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = (
            "the port is in use (another server?)"
            if exc.errno == errno.EADDRINUSE
            else exc.strerror or str(exc)
        )
        raise ConfigError(
            f"cannot listen on {host}:{port}: {why}; stop what holds it, or choose another "
            "port with --port (or port in flywheel.toml)"
        ) from None
    sock.set_inheritable(True)
    return sock


def server_log() -> None:
    """The server's own lines (ready, each model swap, shutdown) on stderr, for a person
    at the terminal: the access log stays JSON lines of its own."""
    logger = logging.getLogger("flywheel")
    if not any(getattr(h, "flywheel_server", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s flywheel: %(message)s", "%Y-%m-%d %H:%M:%S")
        )
        handler.flywheel_server = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def serve(settings: Settings) -> None:
    """Serve in the foreground until SIGINT/SIGTERM, which drain requests in flight.

    The address is bound first (a port in use fails in milliseconds, before the project
    opens). With ``settings.workers`` > 1, uvicorn runs that many processes on one
    socket; each opens the project itself (SQLite in WAL mode with retries, or
    PostgreSQL).
    """
    sock = bind(settings.host, settings.port)
    server_log()
    try:
        project = Project(settings)  # migrates the database once, before any worker starts
        check_can_serve(project)
    except BaseException:
        sock.close()
        raise
    if settings.workers == 1:
        server = _Foreground(_config(project, settings.host, settings.port))
        server.run(sockets=[sock])
        if server.interrupted:
            raise SystemExit(130)  # Ctrl-C, after the graceful stop its lines reported
        return
    sock.close()  # uvicorn's supervisor binds it again for its workers, at once
    project.close()
    os.environ[WORKER_ENV] = settings.model_dump_json(exclude_unset=False)
    uvicorn.run(
        "flywheel.serving.server:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        **_limits(settings),
    )


class BackgroundServer:
    """A server in a thread on a free loopback port; a context manager (demo, tests)."""

    def __init__(self, project: Project, host: str = "127.0.0.1", port: int = 0) -> None:
        check_can_serve(project)
        self.server = uvicorn.Server(_config(project, host, port))
        self.thread = threading.Thread(target=self.server.run, name="flywheel-server", daemon=True)

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the server did not start (port taken, or startup failed)")
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
