"""Small helpers: free loopback ports, polling until ready, timing."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

from infra.local.procs import Part, alive, log_tail


class StackError(RuntimeError):
    """A part of the local stack could not start; the message says which and why."""


_LOWEST_PORT = 20_000  # above the services' standard ports (PostgreSQL, Redis, RabbitMQ, ...)
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and this process has not handed out before.

    Picked at random below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``): a port from that range
    (what binding port 0 gives) can be taken as an outgoing connection's source port between this call and the
    part's own bind, which failed a broker's start with "address already in use".
    """
    ephemeral = _ephemeral_start()
    for _ in range(1000 if ephemeral - _LOWEST_PORT >= 1000 else 0):
        port = _LOWEST_PORT + secrets.randbelow(ephemeral - _LOWEST_PORT)
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a kernel whose ephemeral range starts low
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_start(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port the kernel hands out for port 0 and outgoing connections (32768 where it does not say)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ready(part: Part, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll check() until it is true; fail fast with the log tail when the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if _safe(check):
            return
        if not alive(part.pid):
            raise StackError(f"{what}: process {part.pid} exited during start-up; "
                             f"{part.log_file} ends with:\n{log_tail(part.log_file)}")
        if time.monotonic() >= deadline:
            raise StackError(f"{what}: not ready after {timeout:.0f} s; "
                             f"{part.log_file} ends with:\n{log_tail(part.log_file)}")
        time.sleep(0.1)


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False


def ensure_secret(path: Path, make: Callable[[], str] = lambda: secrets.token_hex(32)) -> str:
    """Return the secret in path, creating it (mode 0600, owner only) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as fh:
            fh.write(make())
    return path.read_text().strip()
