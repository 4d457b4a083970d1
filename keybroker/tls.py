"""TLS for the broker's port: a local CA for the embedded stack, and the loopback rule for plain HTTP.

The local CA is for the embedded (single machine) stack only: it is name-constrained to loopback
(`localhost`, 127.0.0.0/8, ::1), so even a leaked CA key cannot mint a certificate another host would
accept for a real name. Production brokers use certificates from the operator's own CA and set
`tls_cert_path` / `tls_key_path` the same way.

    files = ensure_local_tls(state / "tls", state / "brokers" / "owner", "owner")
    # broker config: "tls_cert_path": files.cert, "tls_key_path": files.key
    # clients:       CSCORE_BROKER_CA=files.ca_cert (AttestedSession, BrokerAdmin)

Also a command line: `python -m keybroker tls --ca-dir DIR --out DIR --name NAME` (prints the paths).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wire.endpoint import is_loopback

CA_ENV = "CSCORE_BROKER_CA"  # what clients read (enclave.kbs_client, sdk.broker_admin)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CA_DAYS = 3650
SERVER_DAYS = 90


@dataclass(frozen=True)
class TlsFiles:
    """PEM paths: the CA certificate clients trust, the server certificate and its key (mode 0600)."""

    ca_cert: Path
    cert: Path
    key: Path


def ensure_local_tls(ca_dir: Path, out_dir: Path, name: str,
                     hosts: Sequence[str] = LOOPBACK_HOSTS, networks: Sequence[str] = ()) -> TlsFiles:
    """Create the local CA in `ca_dir` once (reused afterwards) and a fresh server cert for `name`.

    `networks` (CIDR strings, e.g. the simulated machines' "10.213.7.0/24") widen the CA's name constraints
    beyond loopback; they count only when the CA is created."""
    ca_cert, ca_key = create_local_ca(ca_dir, networks)
    cert, key = issue_server_cert(ca_cert, ca_key, out_dir, name, hosts, networks)
    return TlsFiles(ca_cert, cert, key)


def create_local_ca(folder: Path, networks: Sequence[str] = ()) -> tuple[Path, Path]:
    """Return (ca.pem, ca.key) in `folder`, creating them under a file lock if missing; the CA certifies
    loopback names and addresses in `networks` (CIDR strings) only."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    with _locked(folder / ".ca.lock"):
        if cert_path.is_file() and key_path.is_file():
            return cert_path, key_path
        key_path.unlink(missing_ok=True)  # a half-written CA (no certificate) is replaced whole
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cscore local broker CA (loopback only)")])
        loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                    x509.IPAddress(ipaddress.ip_network("::1/128")),
                    *(x509.IPAddress(ipaddress.ip_network(n)) for n in networks)]
        builder = (_base_builder(subject, subject, key.public_key(), CA_DAYS)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(_usage(cert_sign=True), critical=True)
                   .add_extension(x509.NameConstraints(permitted_subtrees=loopback, excluded_subtrees=None),
                                  critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        _write_key(key_path, key)
        cert_path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_server_cert(ca_cert_path: Path, ca_key_path: Path, out_dir: Path, name: str,
                      hosts: Sequence[str] = LOOPBACK_HOSTS, networks: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write `<name>-tls.pem` and `<name>-tls.key` (0600) in `out_dir`, valid for `hosts` (loopback, or
    addresses in `networks`, the CIDR strings the CA was created for)."""
    foreign = [h for h in hosts if not is_loopback(h) and not _in_networks(h, networks)]
    if foreign:
        raise ValueError(f"the local CA only certifies loopback names and {list(networks)}; got {foreign} "
                         "(use a certificate from your own CA for other hosts)")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path}: expected the EC key written by create_local_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cscore {name} key broker")])
    san = [x509.DNSName(h) if h == "localhost" else x509.IPAddress(ipaddress.ip_address(h.strip("[]")))
           for h in hosts]
    builder = (_base_builder(subject, ca_cert.subject, key.public_key(), SERVER_DAYS)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_usage(cert_sign=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.SubjectAlternativeName(san), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{name}-tls.pem", out_dir / f"{name}-tls.key"
    key_path.unlink(missing_ok=True)
    _write_key(key_path, key)
    cert_path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _in_networks(host: str, networks: Sequence[str]) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a DNS name: only "localhost" is certified
    return any(address in ipaddress.ip_network(n) for n in networks)


def _base_builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
                  days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days)))


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Private keys are created owner-only (O_EXCL: never written through a planted file)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
