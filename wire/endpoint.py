"""Where plain HTTP is allowed: the one rule brokers (serving) and their clients (connecting) share."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1, bracketed or not (the only hosts plain HTTP is allowed on)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
