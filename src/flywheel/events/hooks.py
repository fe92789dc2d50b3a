"""Webhooks' pure parts: the events, a hook's settings, the signature, which addresses
a hook may not reach.

A delivery is ``POST <url>`` with a JSON body ``{"event", "id", "at", "data"}`` and
the headers ``X-Flywheel-Event``, ``X-Flywheel-Delivery`` (the id: receivers drop
repeats, as a retry may repeat a delivery they did get), ``X-Flywheel-Timestamp``
(Unix seconds) and ``X-Flywheel-Signature: sha256=<hex>``, the HMAC-SHA256 of
``<timestamp>.<body>`` keyed with the hook's secret (the timestamp signed too, so that
a receiver can refuse an old delivery replayed).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from flywheel.settings import EVENTS, Webhook

__all__ = ["EVENTS", "Webhook", "check_url", "private_address", "sign"]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Flywheel-Signature`` header's value."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def private_address(host: str) -> bool:
    """Loopback, private, link-local, reserved or unspecified (an IP literal)?"""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
        or ip.is_multicast
    )


def check_url(url: str, addresses: list[str], allow_private: bool) -> str | None:
    """Why ``url`` may not be reached at ``addresses`` (what its host resolves to), or
    None. A hook to this machine, a private network or a cloud's metadata address
    (169.254.169.254) is refused unless ``webhook_allow_private``: a webhook is a request
    the server makes on a configured URL's behalf (server-side request forgery)."""
    host = urlsplit(url).hostname or ""
    if allow_private:
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this machine (set webhook_allow_private to allow it)"
    bad = [a for a in [host, *addresses] if private_address(a)]
    if bad:
        return (
            f"{host} is a loopback, private or link-local address ({bad[0]}); set "
            "webhook_allow_private to allow it"
        )
    return None
