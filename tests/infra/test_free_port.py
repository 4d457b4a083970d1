"""The local stack's ports: below the kernel's ephemeral range, so no outgoing connection takes one before its
part binds it (a broker once failed to start with "address already in use" on a port from that range)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra.local import util


def test_ports_are_below_the_ephemeral_range_bindable_and_never_handed_out_twice() -> None:
    ephemeral = util._ephemeral_start()
    ports = [util.free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(20_000 <= port < ephemeral for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        taken = listening.getsockname()[1]
        low = min(taken, 65_536 - 1000)  # 1000 ports holding `taken`, none past 65535 (bind raises OverflowError)
        monkeypatch.setattr(util, "_LOWEST_PORT", low)
        monkeypatch.setattr(util, "_ephemeral_start", lambda: low + 1000)
        assert taken not in {util.free_port() for _ in range(300)}


def test_the_ephemeral_range_is_read_from_the_kernel_or_taken_as_linux_default(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("40000\t60999\n")
    assert util._ephemeral_start(tmp_path / "range") == 40_000
    assert util._ephemeral_start(tmp_path / "missing") == 32_768


def test_a_kernel_whose_ephemeral_range_starts_low_still_gets_a_free_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(util, "_ephemeral_start", lambda: 20_500)
    port = util.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
