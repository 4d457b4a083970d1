"""TLS on the broker's port: the local CA, clients that verify it, and plain HTTP only on loopback."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from enclave.kbs_client import AttestedSession, BrokerUnreachable, KbsError, broker_tls
from enclave.tee import SimulatedSnpProvider
from keybroker import BrokerConfig
from keybroker.__main__ import main, serve
from keybroker.tls import create_local_ca, ensure_local_tls, issue_server_cert
from sdk.broker_admin import BrokerAdmin
from tests.keybroker.conftest import MEASUREMENT, BrokerProcess


def test_client_with_the_ca_works_and_without_it_fails(provider_broker: BrokerProcess, sim_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert provider_broker.url.startswith("https://")
    monkeypatch.setenv("CSCORE_BROKER_CA", str(provider_broker.ca_bundle))
    admin = BrokerAdmin(provider_broker.url, provider_broker.admin_token)  # CA from the environment
    assert admin.create_key("tls-model", kind="model", measurements=[MEASUREMENT.hex()])["key_id"] == "tls-model"
    wrapped = admin.wrap("tls-model", b"m" * 32)
    worker = AttestedSession(provider_broker.url, SimulatedSnpProvider(sim_dir, MEASUREMENT))
    with pytest.raises(KbsError) as answered:  # over TLS the broker attested the worker and applied its policy
        worker.unwrap("tls-model", wrapped, batch_id="", model_digest="")
    assert answered.value.status == 403 and answered.value.problem["field"] == "grant"
    monkeypatch.delenv("CSCORE_BROKER_CA")
    with pytest.raises(BrokerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        BrokerAdmin(provider_broker.url, provider_broker.admin_token).get_key("tls-model")
    with pytest.raises(BrokerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        AttestedSession(provider_broker.url, SimulatedSnpProvider(sim_dir, MEASUREMENT)).attest()


def test_a_worker_pinned_to_its_broker_ca_refuses_another_ca(provider_broker: BrokerProcess, sim_dir: Path,
                                                             tmp_path: Path) -> None:
    # A relay with a certificate from any other CA (here: a second local CA for the same loopback names)
    # fails the handshake before the worker sends evidence or receives a key.
    other_ca, _ = create_local_ca(tmp_path / "other-ca")
    pinned = AttestedSession(provider_broker.url, SimulatedSnpProvider(sim_dir, MEASUREMENT),
                             ca_pem=other_ca.read_text())
    with pytest.raises(BrokerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        pinned.attest()
    assert provider_broker.ca_bundle is not None
    genuine = AttestedSession(provider_broker.url, SimulatedSnpProvider(sim_dir, MEASUREMENT),
                              ca_pem=provider_broker.ca_bundle.read_text())
    assert genuine.attest().claims["measurement"] == MEASUREMENT.hex()
    with pytest.raises(ValueError, match="https only"):
        AttestedSession("http://127.0.0.1:1", SimulatedSnpProvider(sim_dir, MEASUREMENT), ca_pem=other_ca.read_text())


def test_tls_port_does_not_speak_plain_http(provider_broker: BrokerProcess) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(provider_broker.url.replace("https://", "http://") + "/healthz", timeout=5)


@pytest.mark.parametrize("url", ["http://kbs.owner.example", "http://10.0.0.5:8443", "ftp://127.0.0.1"])
def test_clients_refuse_plain_http_off_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="plain HTTP|scheme"):
        BrokerAdmin(url, "t" * 32)
    with pytest.raises(ValueError, match="plain HTTP|scheme"):
        broker_tls(url)


def test_clients_accept_loopback_http_and_report_a_missing_ca(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"):
        assert broker_tls(url) is True
    with pytest.raises(FileNotFoundError, match="CSCORE_BROKER_CA"):
        broker_tls("https://127.0.0.1:1", tmp_path / "missing.pem")
    ca, _ = create_local_ca(tmp_path / "ca")
    assert isinstance(broker_tls("https://127.0.0.1:1", ca), ssl.SSLContext)


@pytest.mark.parametrize("overrides, message", [
    ({"host": "0.0.0.0"}, "refusing plain HTTP on host '0.0.0.0'"),
    ({"host": "192.0.2.1"}, "refusing plain HTTP"),
    ({"tls_cert_path": "/nonexistent.pem"}, "go together"),
    ({"tls_cert_path": "/nonexistent.pem", "tls_key_path": "/nonexistent.key"}, "does not exist"),
])
def test_broker_refuses_plain_http_off_loopback_and_half_tls(tmp_path: Path, overrides: dict[str, str],
                                                               message: str, caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # serve() sets up the process's root logger (force=True), which would drop caplog's handler in this process.
    monkeypatch.setattr("keybroker.__main__.configure_logging", lambda config: None)
    config = BrokerConfig.from_dict({**BrokerProcess(tmp_path).config, **overrides})
    with pytest.raises(ValueError, match=message):
        config.check_transport()
    assert serve(config) == 2  # refused before binding anything
    assert message.split("'")[0] in caplog.text


def test_non_loopback_bind_is_allowed_with_tls(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "ca", tmp_path / "b", "b")
    config = BrokerConfig.from_dict({**BrokerProcess(tmp_path).config, "host": "0.0.0.0",
                                     "tls_cert_path": str(files.cert), "tls_key_path": str(files.key)})
    config.check_transport()
    assert config.scheme == "https"


def test_local_ca_is_kept_loopback_only_and_keys_are_private(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tls", "--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "o"), "--name", "owner"]) == 0
    first = json.loads(capsys.readouterr().out)
    ca_pem = Path(first["ca_cert"]).read_bytes()
    cert_pem = Path(first["cert"]).read_bytes()
    assert main(["tls", "--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "o"), "--name", "owner"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert Path(second["ca_cert"]).read_bytes() == ca_pem  # the CA clients trust is reused
    assert Path(second["cert"]).read_bytes() != cert_pem  # the server certificate is fresh
    for key in (second["key"], str(tmp_path / "ca" / "ca.key")):
        assert stat.S_IMODE(Path(key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(ca_pem)
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert constraints.permitted_subtrees and x509.DNSName("localhost") in constraints.permitted_subtrees
    cert = x509.load_pem_x509_certificate(Path(second["cert"]).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    with pytest.raises(ValueError, match="only certifies loopback"):
        issue_server_cert(Path(second["ca_cert"]), tmp_path / "ca" / "ca.key", tmp_path / "o", "x",
                          hosts=["kbs.example.com"])
