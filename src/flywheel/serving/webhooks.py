"""The server's webhook sender: a thread that delivers what is due, every second and
at once when woken, over httpx (10 s per attempt, no redirects followed: a redirect
could lead where the address check would refuse)."""

from __future__ import annotations

import logging
import threading

import httpx

from flywheel.project import Project

__all__ = ["WebhookSender"]

log = logging.getLogger("flywheel.serving")


class WebhookSender:
    def __init__(self, project: Project, interval_s: float = 1.0) -> None:
        self.project = project
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=10.0, follow_redirects=False)
        self._thread = threading.Thread(target=self._loop, name="flywheel-webhooks", daemon=True)

    def send(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        return self._client.post(url, content=body, headers=headers).status_code

    def start(self) -> None:
        if self.project.settings.webhooks:
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                while self.project.deliver_webhooks(self.send):
                    if self._stop.is_set():
                        break
            except Exception:  # a busy database: the next round
                log.exception("webhook deliveries could not be sent")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._client.close()
