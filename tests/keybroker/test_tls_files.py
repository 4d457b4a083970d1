"""The local CA and server certificates of `keybroker/tls.py` field by field, in process (no broker): the CA's
name constraints, usages and lifetime, the server certificate's names and usages, the keys' modes, the refusals
word for word, and a TLS handshake over memory between the two. `test_tls.py` covers the broker process over TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keybroker.tls import (
    LOOPBACK_HOSTS,
    TlsFiles,
    _in_networks,
    _locked,
    _write_key,
    create_local_ca,
    ensure_local_tls,
    issue_server_cert,
)

CA_NAME = "cscore local broker CA (loopback only)"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _san(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _verify(cert: x509.Certificate, issuer_key: ec.EllipticCurvePublicKey) -> None:
    issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def _lifetime(cert: x509.Certificate, before: dt.datetime, after: dt.datetime, days: int) -> None:
    """Valid from five minutes before it was made (clock skew) for `days` from when it was made."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    margin = dt.timedelta(minutes=5)
    assert before.replace(microsecond=0) - margin <= start <= after - margin
    assert end - start == dt.timedelta(days=days) + margin


def test_the_local_ca_certifies_loopback_and_the_networks_named_only(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.UTC)
    cert_path, key_path = create_local_ca(tmp_path / "ca", ["10.213.7.0/24"])
    after = dt.datetime.now(dt.UTC)
    assert (cert_path, key_path) == (tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "ca.key")
    ca = _cert(cert_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert ca.public_key() == key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    assert (ca.subject, ca.issuer) == (name, name)
    _verify(ca, key.public_key())  # self-signed with SHA-256
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    _lifetime(ca, before, after, 3650)
    extensions = {type(e.value): (e.critical, e.value) for e in ca.extensions}
    assert extensions == {
        x509.BasicConstraints: (True, x509.BasicConstraints(ca=True, path_length=0)),
        x509.KeyUsage: (True, _usage(cert_sign=True)),
        x509.NameConstraints: (True, x509.NameConstraints(permitted_subtrees=[
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
            x509.IPAddress(ipaddress.ip_network("::1/128")), x509.IPAddress(ipaddress.ip_network("10.213.7.0/24"))],
            excluded_subtrees=None)),
        x509.SubjectKeyIdentifier: (False, x509.SubjectKeyIdentifier.from_public_key(key.public_key()))}
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_the_local_ca_is_made_once_and_a_half_written_one_is_replaced_whole(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "tls"  # made with its parents
    cert_path, key_path = create_local_ca(folder)
    pem, key = cert_path.read_bytes(), key_path.read_bytes()
    assert create_local_ca(folder, ["10.0.0.0/8"]) == (cert_path, key_path)  # networks count only when made
    assert (cert_path.read_bytes(), key_path.read_bytes()) == (pem, key)
    cert_path.unlink()  # a key without its certificate: made again, key and all
    create_local_ca(folder)
    assert key_path.read_bytes() != key and _cert(cert_path).public_key() == serialization.load_pem_private_key(
        key_path.read_bytes(), password=None).public_key()
    key_path.unlink()  # a certificate without its key
    create_local_ca(folder)
    assert key_path.is_file() and cert_path.read_bytes() != pem


def test_the_ca_is_made_under_its_lock(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    folder.mkdir()
    made: list[tuple[Path, Path]] = []
    with _locked(folder / ".ca.lock"):
        other = threading.Thread(target=lambda: made.append(create_local_ca(folder)))
        other.start()
        time.sleep(0.5)
        assert not (folder / "ca.pem").exists() and made == []  # waits for the lock
    other.join(30)
    assert made == [(folder / "ca.pem", folder / "ca.key")]


def test_a_server_certificate_names_its_hosts_for_server_auth_only(tmp_path: Path) -> None:
    ca_cert, ca_key_path = create_local_ca(tmp_path / "ca", ["10.213.7.0/24"])
    before = dt.datetime.now(dt.UTC)
    cert_path, key_path = issue_server_cert(ca_cert, ca_key_path, tmp_path / "out" / "owner", "owner",
                                            hosts=["localhost", "127.0.0.1", "[::1]", "10.213.7.5"],
                                            networks=["10.213.7.0/24"])
    after = dt.datetime.now(dt.UTC)
    assert (cert_path, key_path) == (tmp_path / "out" / "owner" / "owner-tls.pem",
                                     tmp_path / "out" / "owner" / "owner-tls.key")
    cert, ca = _cert(cert_path), _cert(ca_cert)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert cert.public_key() == key.public_key()
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cscore owner key broker")])
    assert cert.issuer == ca.subject
    _verify(cert, ca_key.public_key())
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    _lifetime(cert, before, after, 90)
    extensions = {type(e.value): (e.critical, e.value) for e in cert.extensions}
    assert extensions == {
        x509.BasicConstraints: (True, x509.BasicConstraints(ca=False, path_length=None)),
        x509.KeyUsage: (True, _usage(cert_sign=False)),
        x509.ExtendedKeyUsage: (False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])),
        x509.SubjectAlternativeName: (False, x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")), x509.IPAddress(ipaddress.ip_address("10.213.7.5"))])),
        x509.SubjectKeyIdentifier: (False, x509.SubjectKeyIdentifier.from_public_key(key.public_key())),
        x509.AuthorityKeyIdentifier: (False, x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()))}
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert cert.serial_number != ca.serial_number


def test_the_default_hosts_are_the_loopback_ones_and_a_reissue_replaces_both_files(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "ca", tmp_path / "out", "provider")
    assert files == TlsFiles(tmp_path / "ca" / "ca.pem", tmp_path / "out" / "provider-tls.pem",
                             tmp_path / "out" / "provider-tls.key")
    assert LOOPBACK_HOSTS == ("127.0.0.1", "localhost", "::1")
    assert _san(_cert(files.cert)) == [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                         x509.IPAddress(ipaddress.ip_address("::1"))]
    pem, key = files.cert.read_bytes(), files.key.read_bytes()
    again = ensure_local_tls(tmp_path / "ca", tmp_path / "out", "provider", networks=["10.0.0.0/8"])
    assert again == files and files.cert.read_bytes() != pem and files.key.read_bytes() != key
    assert _cert(files.cert).public_key() == serialization.load_pem_private_key(
        files.key.read_bytes(), password=None).public_key()
    constraints = _cert(files.ca_cert).extensions.get_extension_for_class(x509.NameConstraints).value
    assert x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")) not in (constraints.permitted_subtrees or [])


def test_a_handshake_over_memory_accepts_the_servers_certificate_by_its_loopback_names(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "ca", tmp_path / "out", "owner")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert, files.key)
    client = ssl.create_default_context(cafile=str(files.ca_cert))
    for name in ("localhost", "127.0.0.1", "::1"):
        assert _handshake(server, client, name) is None
    refused = _handshake(server, client, "kbs.example.com")
    assert isinstance(refused, ssl.SSLCertVerificationError)
    assert refused.verify_message == "Hostname mismatch, certificate is not valid for 'kbs.example.com'."


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> ssl.SSLError | None:
    """A TLS handshake between two contexts over memory; the client's error, or None."""
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    ends = [client.wrap_bio(*pipes[0], server_hostname=name), server.wrap_bio(*pipes[1], server_side=True)]
    done = [False, False]
    for _ in range(20):
        for i, end in enumerate(ends):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    if i == 0:
                        return exc
                    done[i] = True
            outgoing, incoming = pipes[i][1], pipes[1 - i][0]
            incoming.write(outgoing.read())
        if all(done):
            return None
    raise AssertionError(f"the handshake for {name} did not finish")


@pytest.mark.parametrize(("hosts", "networks", "foreign"), [
    (["kbs.example.com"], [], ["kbs.example.com"]),
    (["localhost", "10.0.0.1", "192.168.1.1"], ["10.0.0.0/24"], ["192.168.1.1"]),
    (["10.0.1.1"], ["10.0.0.0/24"], ["10.0.1.1"])])
def test_a_host_outside_loopback_and_the_networks_is_refused_word_for_word(
        tmp_path: Path, hosts: list[str], networks: list[str], foreign: list[str]) -> None:
    ca_cert, ca_key = create_local_ca(tmp_path / "ca")
    with pytest.raises(ValueError) as refused:
        issue_server_cert(ca_cert, ca_key, tmp_path / "out", "owner", hosts=hosts, networks=networks)
    assert str(refused.value) == (f"the local CA only certifies loopback names and {networks}; got {foreign} "
                                  "(use a certificate from your own CA for other hosts)")
    assert not (tmp_path / "out").exists()


def test_a_ca_key_that_is_not_ec_is_refused_naming_its_file(tmp_path: Path) -> None:
    ca_cert, _ = create_local_ca(tmp_path / "ca")
    other = tmp_path / "other.key"
    other.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ValueError) as refused:
        issue_server_cert(ca_cert, other, tmp_path / "out", "owner")
    assert str(refused.value) == f"{other}: expected the EC key written by create_local_ca"


@pytest.mark.parametrize(("host", "networks", "inside"), [
    ("10.0.0.7", ["10.0.0.0/24"], True), ("[fd00::7]", ["fd00::/64"], True), ("10.0.1.7", ["10.0.0.0/24"], False),
    ("10.0.0.7", [], False), ("localhost", ["10.0.0.0/24"], False), ("kbs.example.com", ["0.0.0.0/0"], False),
    ("10.0.1.7", ["10.0.0.0/24", "10.0.1.0/24"], True), ("X10.0.0.7", ["10.0.0.0/24"], False),
    ("10.0.0.7X", ["10.0.0.0/24"], False)])
def test_in_networks_reads_addresses_only(host: str, networks: list[str], inside: bool) -> None:
    assert _in_networks(host, networks) is inside


def test_a_private_key_is_never_written_through_a_planted_file(tmp_path: Path) -> None:
    planted = tmp_path / "planted.key"
    planted.write_bytes(b"")
    planted.chmod(0o666)
    with pytest.raises(FileExistsError):
        _write_key(planted, ec.generate_private_key(ec.SECP256R1()))
    assert planted.read_bytes() == b""
    fresh = tmp_path / "fresh.key"
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(fresh, key)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert fresh.read_bytes() == key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption())


def test_ensure_local_tls_certifies_a_host_of_the_networks_it_makes_the_ca_for(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "ca", tmp_path / "out", "worker", hosts=["localhost", "10.213.7.5"],
                             networks=["10.213.7.0/24"])
    constraints = _cert(files.ca_cert).extensions.get_extension_for_class(x509.NameConstraints).value
    assert x509.IPAddress(ipaddress.ip_network("10.213.7.0/24")) in (constraints.permitted_subtrees or [])
    assert _san(_cert(files.cert)) == [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("10.213.7.5"))]
