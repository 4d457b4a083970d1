"""Many machines simulated on one host: one Linux network namespace per party, joined by a bridge.

Each party's namespace has its own loopback and one end of a veth pair whose other end is on a bridge in a
hub namespace of its own (nothing is added to the host's bridges or firewall); the host joins the same
bridge through one more veth pair, so a test (or the stack that supervises the parties) reaches each party
at its address, as a machine on the same LAN would. One 10.x.y.0/24 per network, picked so it clashes with
no route of the host; every name carries the creating process's id and a random tag, so parallel runs do
not clash and a later run removes what a killed one left behind.

    with Network(["brokers", "workers"]) as net:
        net["brokers"].address          # "10.213.7.2"
        net["brokers"].launcher         # ["ip", "netns", "exec", "csn-4711-a1b2c3-brokers"]

Needs root (CAP_NET_ADMIN) and iproute2's `ip`. Errors: NetworkError with the failing command's stderr.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from infra.local.procs import alive

PREFIX = "csn"  # every namespace this module creates: csn-<pid>-<tag>-<party>
IFNAMSIZ = 15  # Linux interface names are at most 15 bytes


class NetworkError(RuntimeError):
    """A namespace, veth pair or address could not be set up; the message has the command and its error."""


@dataclass(frozen=True)
class Namespace:
    """One simulated machine: its namespace name and its address on the shared LAN."""

    name: str
    address: str

    @property
    def launcher(self) -> list[str]:
        """The argv prefix that runs a command inside this namespace."""
        return ["ip", "netns", "exec", self.name]


def ip(*args: str) -> str:
    """Run `ip args...`; NetworkError with its stderr when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603, S607
    if done.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """Names of every network namespace on the host (`ip netns list`)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Delete the namespaces (with their veth pairs and bridge) of runs whose process is gone; return them."""
    removed = []
    for name in namespaces():
        fields = name.split("-")
        if len(fields) >= 3 and fields[0] == PREFIX and fields[1].isdigit() and not alive(int(fields[1])):
            ip("netns", "delete", name)
            removed.append(name)
    return removed


def free_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps no address or route of the host."""
    listed = ip("-4", "route", "show", "table", "all") + ip("-4", "-o", "addr", "show")
    taken = [net for word in listed.split() if (net := _as_network(word)) is not None]
    rng = rng or random.Random(secrets.randbits(64))
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{rng.randint(64, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise NetworkError("no free 10.x.y.0/24 subnet found for the simulated machines")


def _as_network(word: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(word, strict=False) if word[:1].isdigit() else None
    except ValueError:
        return None


class Network:
    """Namespaces for `parties` on one bridged /24, the host joined at .1; torn down on exit, even on error."""

    def __init__(self, parties: Sequence[str]) -> None:
        if len(set(parties)) != len(parties) or not parties:
            raise ValueError(f"parties must be distinct and non-empty: {list(parties)}")
        self.parties = list(parties)
        self.tag = secrets.token_hex(3)
        self.hub = f"{PREFIX}-{os.getpid()}-{self.tag}-hub"
        self.subnet: ipaddress.IPv4Network | None = None
        self.members: dict[str, Namespace] = {}
        self._created: list[str] = []
        self._host_link: str | None = None

    @property
    def cidr(self) -> str:
        """The LAN, e.g. "10.213.7.0/24"."""
        if self.subnet is None:
            raise NetworkError("the network is not up")
        return str(self.subnet)

    @property
    def host_address(self) -> str:
        """The host's own address on the LAN (where the parties reach the supervising process)."""
        return str(self._addr(1))

    def __getitem__(self, party: str) -> Namespace:
        return self.members[party]

    def __enter__(self) -> Network:
        return self.up()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> Network:
        """Create hub, bridge, one namespace and veth pair per party, the host's veth; down() on any failure."""
        remove_stale()
        self.subnet = free_subnet()
        try:
            self._add_namespace(self.hub)
            bridge = self._ifname("br")
            ip("-n", self.hub, "link", "add", bridge, "type", "bridge")
            ip("-n", self.hub, "link", "set", bridge, "up")
            self._join(None, 1, bridge)  # the host
            for i, party in enumerate(self.parties, start=2):
                name = f"{PREFIX}-{os.getpid()}-{self.tag}-{party}"
                self._add_namespace(name)
                self._join(name, i, bridge)
                self.members[party] = Namespace(name, str(self._addr(i)))
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Delete the host's veth, then every namespace created (their veth ends go with them)."""
        errors = []
        if self._host_link is not None:  # deleted here, not left to the kernel's asynchronous namespace clean-up
            try:
                ip("link", "delete", self._host_link)
            except NetworkError as exc:
                errors.append(str(exc))
            self._host_link = None
        for name in reversed(self._created):
            try:
                ip("netns", "delete", name)
            except NetworkError as exc:
                errors.append(str(exc))
        self._created.clear()
        self.members.clear()
        if errors:
            raise NetworkError("; ".join(errors))

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _join(self, namespace: str | None, index: int, bridge: str) -> None:
        """A veth pair: one end (the machine's eth0) in `namespace` (None: the host), the other on the bridge."""
        inner, outer = self._ifname(f"m{index}"), self._ifname(f"b{index}")
        ip("link", "add", inner, "type", "veth", "peer", "name", outer, "netns", self.hub)
        ip("-n", self.hub, "link", "set", outer, "master", bridge, "up")
        where = [] if namespace is None else ["-n", namespace]
        if namespace is None:
            self._host_link = inner
        else:
            ip("link", "set", inner, "netns", namespace)
        ip(*where, "addr", "add", f"{self._addr(index)}/{self.subnet.prefixlen if self.subnet else 24}",
           "dev", inner)
        ip(*where, "link", "set", inner, "up")

    def _ifname(self, suffix: str) -> str:
        name = f"cs{self.tag}{suffix}"
        if len(name) > IFNAMSIZ:
            raise NetworkError(f"interface name {name} is longer than {IFNAMSIZ} bytes (too many parties?)")
        return name

    def _addr(self, index: int) -> ipaddress.IPv4Address:
        if self.subnet is None:
            raise NetworkError("the network is not up")
        return self.subnet.network_address + index
