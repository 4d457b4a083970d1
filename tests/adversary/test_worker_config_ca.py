"""The platform publishes a worker configuration that names the owner's broker at its own URL but pins a CA of
the platform's. A worker launched with it trusts any certificate of that CA at that URL: the platform (which
runs the network) answers there, relays attestation and unwraps to the real broker, and "releases" the batch's
result key itself (a JWE to the worker's tee key, which the attestation request shows). The worker wraps the
results under that key: the platform reads every score. The owner grants the configuration's digest when it
submits, so the owner's check of the published configuration is where the attack stops: the CA it names for
the owner's broker must be one the broker's real certificate (verified by the owner's own trust) chains to.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave.signing import generate_signing_key
from keybroker.tls import create_local_ca, ensure_local_tls
from sdk.platform import WorkerConfigError, config_for_owner
from tests.keybroker.conftest import BrokerProcess
from wire.worker_config import WorkerConfig


@pytest.fixture
def owner_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BrokerProcess]:
    """The owner's real broker over TLS with its own CA, which the owner's clients trust ($CSCORE_BROKER_CA)."""
    tls = ensure_local_tls(tmp_path / "owner-ca", tmp_path / "owner-tls", "owner")
    broker = BrokerProcess(tmp_path / "owner", name="owner", tls=tls, accept_simulated=False, simulated_key_ids=[],
                           shutdown_timeout_s=1).start()
    monkeypatch.setenv("CSCORE_BROKER_CA", str(tls.ca_cert))
    try:
        yield broker
    finally:
        broker.stop()


def _config(owner_url: str, owner_ca: str) -> WorkerConfig:
    provider_key: dict[str, Any] = generate_signing_key().as_dict(private=False)
    return WorkerConfig.parse({
        "type": "cscore.worker-config/v1", "tee": "simulated-sev-snp", "insecure_plaintext_baseline": False,
        "owners": [{"name": "owner", "url": owner_url, "ca_pem": owner_ca}],
        "providers": [{"name": "provider", "url": "https://127.0.0.1:1", "ca_pem": owner_ca,
                       "card_keys": [provider_key]}]})


def test_a_configuration_pinning_the_platforms_ca_for_the_owners_broker_is_not_granted(
        owner_broker: BrokerProcess, tmp_path: Path) -> None:
    platform_ca, _ = create_local_ca(tmp_path / "platform-ca")  # certifies the same loopback names
    forged = _config(owner_broker.url, platform_ca.read_text())
    with pytest.raises(WorkerConfigError) as refused:
        config_for_owner(forged, "owner", owner_broker.url)
    assert str(refused.value) == (
        f"worker configuration {forged.digest_hex()}: owners[owner].ca_pem expected the CA your broker's certificate "
        "(as your own trust verifies it) chains to, got another CA; do not grant it")


def test_the_configuration_pinning_the_brokers_own_ca_is_granted(owner_broker: BrokerProcess) -> None:
    assert owner_broker.ca_bundle is not None
    genuine = _config(owner_broker.url, owner_broker.ca_bundle.read_text())
    assert config_for_owner(genuine, "owner", owner_broker.url) == genuine.digest_hex()


def test_a_broker_the_owners_own_trust_does_not_verify_is_not_granted(
        owner_broker: BrokerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The platform's relay at the owner's URL with the platform's CA in the configuration: the owner's own trust
    refuses the relay's certificate, whatever CA the configuration names."""
    platform_ca, _ = create_local_ca(tmp_path / "platform-ca")
    monkeypatch.setenv("CSCORE_BROKER_CA", str(platform_ca))  # the owner's trust: not the CA the URL answers with
    forged = _config(owner_broker.url, platform_ca.read_text())
    with pytest.raises(WorkerConfigError, match=r"owners\[owner\]\.ca_pem expected the CA your broker's"):
        config_for_owner(forged, "owner", owner_broker.url)
