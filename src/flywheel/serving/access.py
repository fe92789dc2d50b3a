"""The access log: one JSON line per request.

``{"time", "method", "route", "status", "latency_ms", "key", "client"}`` — the route
as its template (``/v1/users/{user_id}``), never the raw path, so no user id, prediction
id or query string is written; ``key`` is the name of the key or dashboard session that
was let in (never the key itself), null when none was. No user id, raw or pseudonymous,
is written: a log that outlives a forget must not say what the forgotten user did.

Records are put on a queue by the request and written by a thread of the logging
module's own (``QueueListener``), so a slow disk never holds a request. ``access_log``
says where: ``stderr`` (the default), ``off``, or a file (relative to the project;
created 0600, reopened when log rotation moves it away).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.settings import Settings

__all__ = ["AccessLog", "record"]


class _JsonLines(logging.Formatter):
    def format(self, rec: logging.LogRecord) -> str:
        return json.dumps(getattr(rec, "access", {}), separators=(",", ":"))


def record(scope: Mapping[str, Any], status: int, seconds: float) -> dict[str, Any]:
    """The access record of a finished request (its ASGI scope)."""
    route = scope.get("route")
    caller = scope.get("flywheel_caller")
    client = scope.get("client")
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "method": scope.get("method", ""),
        "route": getattr(route, "path", None) or "unmatched",
        "status": status,
        "latency_ms": round(seconds * 1000, 2),
        "key": getattr(caller, "key", None),
        "client": client[0] if client else None,
    }


class AccessLog:
    """Where a server writes its access log, between its start and its stop."""

    def __init__(self, settings: Settings) -> None:
        self.target = settings.access_log
        self.path = None if self.target in ("stderr", "off") else Path(self.target)
        if self.path is not None and not self.path.is_absolute():
            self.path = settings.project_dir / self.path
        self._listener: logging.handlers.QueueListener | None = None
        self._handler: logging.Handler | None = None

    @property
    def on(self) -> bool:
        return self._handler is not None

    def start(self) -> None:
        if self.target == "off":
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            sink: logging.Handler = logging.handlers.WatchedFileHandler(self.path)
        else:
            sink = logging.StreamHandler(sys.stderr)
        sink.setFormatter(_JsonLines())
        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        # This server's own handler, not a logger's: two apps in one process (tests, a
        # host application) keep their logs apart.
        self._handler = logging.handlers.QueueHandler(q)
        self._listener = logging.handlers.QueueListener(q, sink)
        self._listener.start()

    def write(self, entry: dict[str, Any]) -> None:
        handler = self._handler
        if handler is not None:
            handler.handle(
                logging.makeLogRecord(
                    {
                        "name": "flywheel.access",
                        "levelno": logging.INFO,
                        "msg": "access",
                        "levelname": "INFO",
                        "access": entry,
                    }
                )
            )

    def stop(self) -> None:
        """Write what is queued, then let go of the file."""
        if self._handler is None or self._listener is None:
            return
        self._listener.stop()
        for handler in self._listener.handlers:
            handler.close()
        self._handler = self._listener = None
