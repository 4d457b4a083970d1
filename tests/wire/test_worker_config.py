"""The worker configuration document: strict parsing, and a digest that moves with every trust decision."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from wire.errors import FormatError
from wire.worker_config import WorkerConfig, config_digest_from_claims, mrconfigid

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}
DOC: dict[str, Any] = {
    "type": "cscore.worker-config/v1", "tee": "configfs-tsm", "insecure_plaintext_baseline": False,
    "owners": [{"name": "acme", "url": "https://kbs.acme.example", "ca_pem": CA}],
    "providers": [{"name": "spamco", "url": "https://kbs.spamco.example", "ca_pem": CA, "card_keys": [KEY]}],
    "transport": {"broker_url": "rediss://celery.platform.example:6380/0",
                  "result_backend": "rediss://celery.platform.example:6380/1"},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    target = doc
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[last] = value  # type: ignore[index]
    return doc


def test_the_digest_is_sha256_of_the_rfc8785_document() -> None:
    config = WorkerConfig.parse(DOC)
    # This document has no numbers, so RFC 8785 is sorted keys, no whitespace, UTF-8.
    expected = hashlib.sha256(json.dumps(DOC, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config.digest_hex() == expected and config.to_json() == DOC
    assert config_digest_from_claims(mrconfigid(config.digest()).hex()) == expected  # TDX: 48 bytes, zero-padded


@pytest.mark.parametrize(("path", "value"), [
    ("owners.0.url", "https://relay.platform.example"), ("owners.0.ca_pem", CA.replace("MIIB", "MIIC")),
    ("tee", "simulated-sev-snp"), ("providers.0.card_keys", [{**KEY, "x": "B" * 43}]),
    ("transport.broker_url", "rediss://elsewhere:6380/0"),
])
def test_every_trust_decision_moves_the_digest(path: str, value: Any) -> None:
    assert WorkerConfig.parse(_with(path, value)).digest_hex() != WorkerConfig.parse(DOC).digest_hex()


@pytest.mark.parametrize(("path", "value", "field"), [
    ("extra_brokers", ["https://x"], "worker_config.extra_brokers"),
    ("owners.0.url", "http://kbs.acme.example", "worker_config.owners[0].url"),
    ("owners.0.ca_pem", "not a certificate", "worker_config.owners[0].ca_pem"),
    ("providers.0.card_keys", [{**KEY, "d": "secret"}], "worker_config.providers[0].card_keys"),
    ("providers.0.card_keys", [], "worker_config.providers[0].card_keys"),
    ("tee", "sgx", "worker_config.tee"),
    ("insecure_plaintext_baseline", True, "worker_config.insecure_plaintext_baseline"),  # real TEE: never
    ("transport.queue", "x", "worker_config.transport.queue"),
    ("type", "cscore.worker-config/v0", "worker_config.type"),
])
def test_a_malformed_document_names_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(FormatError) as refused:
        WorkerConfig.parse(_with(path, value))
    assert refused.value.field == field


def test_broker_names_are_unique_and_looked_up_by_name() -> None:
    twice = _with("owners", [DOC["owners"][0], {**DOC["owners"][0], "url": "https://other.example"}])
    with pytest.raises(FormatError, match="unique names"):
        WorkerConfig.parse(twice)
    config = WorkerConfig.parse(DOC)
    assert config.owner("acme").url == "https://kbs.acme.example"
    with pytest.raises(FormatError) as unknown:
        config.owner("platform")
    assert unknown.value.field == "owner_broker" and unknown.value.actual == "platform"
