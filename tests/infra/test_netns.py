"""Simulated machines (infra/local/netns.py): a party reaches another's TLS server over the LAN, never its
loopback; every namespace is removed after use, after an error, and after a run that was killed."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local import netns
from infra.local.netns import Network
from keybroker.tls import ensure_local_tls

pytestmark = pytest.mark.timeout(120)

SERVER = textwrap.dedent("""
    import socket, ssl, sys, threading
    address, port, loop_port, cert, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lan = socket.create_server((address, port))
    loop = socket.create_server(("127.0.0.1", loop_port))  # this machine's own loopback service
    def serve_loop():
        while True:
            conn, _ = loop.accept()
            conn.sendall(b"loopback-secret")
            conn.close()
    threading.Thread(target=serve_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = lan.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello over tls")
        except (ssl.SSLError, OSError):
            pass
""")

CLIENT = textwrap.dedent("""
    import json, socket, ssl, sys
    address, port, loop_port, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    out = {}
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((address, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=address) as s:
            out["tls"] = s.recv(100).decode()
    try:
        with socket.create_connection(("127.0.0.1", loop_port), timeout=5) as s:
            out["loopback"] = s.recv(100).decode()
    except OSError as exc:
        out["loopback"] = type(exc).__name__
    print(json.dumps(out))
""")


@pytest.fixture
def net() -> Iterator[Network]:
    with Network(["server", "client"]) as network:
        yield network


def _run_in(ns: netns.Namespace, script: str, *args: str) -> dict[str, str]:
    done = subprocess.run([*ns.launcher, sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_party_reaches_anothers_tls_server_but_not_its_loopback(net: Network, tmp_path: Path) -> None:
    server, client = net["server"], net["client"]
    lan = ipaddress.ip_network(net.cidr)
    assert server.address != client.address
    assert {ipaddress.ip_address(a) in lan for a in (server.address, client.address, net.host_address)} == {True}
    tls = ensure_local_tls(tmp_path / "ca", tmp_path / "server", "server", hosts=[server.address],
                           networks=[net.cidr])
    port, loop_port = "8443", "9000"
    proc = subprocess.Popen([*server.launcher, sys.executable, "-c", SERVER, server.address, port, loop_port,
                             str(tls.cert), str(tls.key)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        seen = _run_in(client, CLIENT, server.address, port, loop_port, str(tls.ca_cert))
        assert seen == {"tls": "hello over tls", "loopback": "ConnectionRefusedError"}
        # The loopback service is real: the server's own machine reaches it.
        assert _run_in(server, CLIENT, server.address, port, loop_port, str(tls.ca_cert))["loopback"] == \
            "loopback-secret"
        # The host joins the LAN too (it supervises the parties), and it verifies the same certificate.
        host = subprocess.run([sys.executable, "-c", CLIENT, server.address, port, loop_port, str(tls.ca_cert)],
                              capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(host.stdout)["tls"] == "hello over tls"
    finally:
        proc.kill()
        proc.wait()


def test_the_local_ca_certifies_only_the_lan_it_was_made_for(net: Network, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only certifies"):
        ensure_local_tls(tmp_path / "ca", tmp_path / "out", "x", hosts=["10.1.2.3"], networks=[net.cidr])


def test_namespaces_are_removed_after_an_error() -> None:
    network = Network(["a"])
    with pytest.raises(RuntimeError, match="boom"), network:
        created = {network.hub, network["a"].name}
        assert created <= set(netns.namespaces())
        raise RuntimeError("boom")
    assert not created & set(netns.namespaces())
    assert not [line for line in netns.ip("-o", "link").splitlines() if f"cs{network.tag}" in line]


def test_a_killed_runs_namespaces_are_removed_by_the_next_run() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.PREFIX}-{dead.pid}-abcdef-hub"
    netns.ip("netns", "add", stale)
    try:
        assert stale in netns.remove_stale()
        assert stale not in netns.namespaces()
    finally:
        if stale in netns.namespaces():
            netns.ip("netns", "delete", stale)


def test_parallel_networks_get_distinct_names_and_subnets() -> None:
    with Network(["a"]) as first, Network(["a"]) as second:
        assert first["a"].name != second["a"].name
        assert first.cidr != second.cidr
