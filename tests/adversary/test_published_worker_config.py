"""The worker configuration the platform publishes, which an owner's submit grants (its digest is the workers'
HOST_DATA): whom a worker takes for the owner's broker and for the provider's card signer comes from it.

- It names the owner's broker at its own URL but pins a CA of the platform's. A worker launched with it trusts
  any certificate of that CA at that URL: the platform (which runs the network) answers there, relays attestation
  and unwraps to the real broker, and "releases" the batch's result key itself (a JWE to the worker's tee key,
  which the attestation request shows). The worker wraps the results under that key: the platform reads every
  score. The CA it names must be one the broker's real certificate (verified by the owner's own trust) chains to.
- It lists a card key of the platform's beside the provider's. A worker takes any card that key signs as the
  provider's: the chosen model's digest, name and version, with another contract (`class_index` 0: the spam
  probability column holds P(ham)) or other terms. The receipts name the model's digest only, so the owner
  would accept the inverted scores as the model's. Every card key listed for the chosen model's provider must
  be one the owner pinned.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from enclave.signing import generate_signing_key
from keybroker.tls import create_local_ca, ensure_local_tls
from sdk.broker_admin import BrokerAdminError
from sdk.emails import Email
from sdk.models import ModelListing
from sdk.owner import submit_batch
from sdk.party import Party
from sdk.platform import WORKER_CONFIG_KEY, WorkerConfigError, config_for_owner
from tests.keybroker.conftest import BrokerProcess
from wire.card import ModelCard
from wire.contract import SPAM_CONTRACT, SPAM_TASK, Contract
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


def _config(owner_url: str, owner_ca: str, card_keys: list[dict[str, Any]] | None = None) -> WorkerConfig:
    provider_key: dict[str, Any] = generate_signing_key().as_dict(private=False)
    return WorkerConfig.parse({
        "type": "cscore.worker-config/v1", "tee": "simulated-sev-snp", "insecure_plaintext_baseline": False,
        "owners": [{"name": "owner", "url": owner_url, "ca_pem": owner_ca}],
        "providers": [{"name": "provider", "url": "https://127.0.0.1:1", "ca_pem": owner_ca,
                       "card_keys": card_keys or [provider_key]}]})


def test_a_configuration_pinning_the_platforms_ca_for_the_owners_broker_is_not_granted(
        owner_broker: BrokerProcess, tmp_path: Path) -> None:
    platform_ca, _ = create_local_ca(tmp_path / "platform-ca")  # certifies the same loopback names
    forged = _config(owner_broker.url, platform_ca.read_text())
    with pytest.raises(WorkerConfigError) as refused:
        config_for_owner(forged, "owner", owner_broker.url)
    assert str(refused.value) == (
        f"worker configuration {forged.digest_hex()}: owners[owner].ca_pem expected only CAs your own trust holds "
        f"({owner_broker.ca_bundle}), got one more (CN=cscore local broker CA (loopback only)); do not grant it")


def test_a_configuration_pinning_the_brokers_ca_and_the_platforms_beside_it_is_not_granted(
        owner_broker: BrokerProcess, tmp_path: Path) -> None:
    """The broker's real certificate verifies under the bundle, and so would the platform's relay's."""
    assert owner_broker.ca_bundle is not None
    platform_ca, _ = create_local_ca(tmp_path / "platform-ca")
    forged = _config(owner_broker.url, owner_broker.ca_bundle.read_text() + platform_ca.read_text())
    with pytest.raises(WorkerConfigError) as refused:
        config_for_owner(forged, "owner", owner_broker.url)
    assert str(refused.value) == (
        f"worker configuration {forged.digest_hex()}: owners[owner].ca_pem expected only CAs your own trust holds "
        f"({owner_broker.ca_bundle}), got one more (CN=cscore local broker CA (loopback only)); do not grant it")


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
    with pytest.raises(WorkerConfigError) as refused:
        config_for_owner(forged, "owner", owner_broker.url)
    assert str(refused.value) == (
        f"worker configuration {forged.digest_hex()}: owners[owner].ca_pem expected the CA your broker's certificate "
        "(as your own trust verifies it) chains to, got another CA; do not grant it")


class Bucket:
    """The platform's bucket: whatever it holds, by key."""

    bucket = "test"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def get_if_exists(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.objects[key] = data

    put_large = put


def _spam_model() -> ModelListing:
    card = ModelCard(name="spam-filter", version=1, digest="sha256:" + "ab" * 32,
                     object_key="models/spam-filter/1/model.onnx.enc", protection="aes-256-gcm", broker="provider",
                     key_id="model.spam-filter", wrapped_dek="AAAA", probability_digits=None, quota=None,
                     task=SPAM_TASK, contract=Contract.parse(SPAM_CONTRACT), metrics={}, price=None, raw={})
    return ModelListing("spam-filter", 1, card.digest, "signer", 0, True, card)


def test_an_owner_does_not_grant_a_configuration_listing_the_platforms_card_key_for_its_provider(
        owner_broker: BrokerProcess, tmp_path: Path) -> None:
    """The owner's own submit, against its real broker: the configuration is refused before any key or grant."""
    assert owner_broker.ca_bundle is not None
    owner = Party(tmp_path / "owner-home", owner_broker.url, "owner")
    owner.home.mkdir()
    (owner.home / "broker-admin-token").write_text(owner_broker.admin_token)
    provider_key = generate_signing_key().as_dict(private=False)
    owner.trust_provider(provider_key)
    platform_key = generate_signing_key().as_dict(private=False)
    forged = _config(owner_broker.url, owner_broker.ca_bundle.read_text(), [provider_key, platform_key])
    bucket = Bucket()
    bucket.put(WORKER_CONFIG_KEY, json.dumps(forged.to_json()).encode())
    with pytest.raises(WorkerConfigError) as refused:
        submit_batch([Email("<m1@x>", "win money now")], _spam_model(), tenant="acme", owner=owner, store=bucket,  # type: ignore[arg-type]
                     measurements=["00" * 48], batch_id="b-forged-card-key")
    assert str(refused.value) == (
        f"worker configuration {forged.digest_hex()}: providers[provider].card_keys expected only provider keys you "
        f"pinned {[OKPKey.import_key(provider_key).thumbprint()]}, got {OKPKey.import_key(platform_key).thumbprint()}; "
        "a worker would take the cards it signs for that provider's: do not grant it")
    with pytest.raises(BrokerAdminError, match="404"):
        owner.broker().get_grant("b-forged-card-key")  # nothing granted
    assert list(bucket.objects) == [WORKER_CONFIG_KEY]  # nothing uploaded
    genuine = _config(owner_broker.url, owner_broker.ca_bundle.read_text(), [provider_key])
    assert config_for_owner(genuine, "owner", owner_broker.url, provider="provider",
                            trusted_keys=owner.trusted_providers()) == genuine.digest_hex()
