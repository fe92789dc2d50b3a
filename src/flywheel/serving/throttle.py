"""Failed authentications throttled per client address.

A wrong, unknown, revoked or expired key (or a malformed ``Authorization`` header, or a
failed dashboard sign-in) counts against the address it came from; at
``auth_failures_per_minute`` failures within a minute, the address gets 429 with
``Retry-After`` on everything that checks a key — a right key included, so that guessing
goes no faster by finding one — until the oldest of those failures is a minute old.
Requests that send no key are not counted (the open routes keep answering). Kept in
memory per server process, for at most ``max_clients`` addresses (the least recently
failed are forgotten first).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["AuthThrottle"]


class AuthThrottle:
    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may try a key again; None when it may now."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            if times is None or len(times) < self.limit:
                return None
            return max(1, math.ceil(times[-self.limit] + self.window_s - now))

    def failed(self, client: str) -> None:
        """Count a failed authentication from ``client``."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
