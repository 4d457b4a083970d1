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


OWNER_URL = "an https:// URL (the worker authenticates every broker by TLS)"
CARD_KEYS = "one or more public Ed25519 JWKs"
OWNER_KEYS = "one of ['ca_pem', 'name', 'url']"
PROVIDER_KEYS = "one of ['ca_pem', 'card_keys', 'name', 'url']"
TOP_KEYS = "one of ['insecure_plaintext_baseline', 'owners', 'providers', 'tee', 'transport', 'type']"


@pytest.mark.parametrize(("path", "value", "field", "expected", "actual"), [
    ("extra_brokers", ["https://x"], "worker_config.extra_brokers", TOP_KEYS, "extra_brokers"),
    ("owners.0.url", "http://kbs.acme.example", "worker_config.owners[0].url", OWNER_URL, "http://kbs.acme.example"),
    ("owners.0.url", "https://", "worker_config.owners[0].url", OWNER_URL, "https:"),  # no host; "/" stripped
    ("owners.0.url", "https:///path", "worker_config.owners[0].url", OWNER_URL, "https:///path"),
    ("owners.0.url", 3, "worker_config.owners[0].url", "str", "int"),
    ("owners.0.name", None, "worker_config.owners[0].name", "str", "NoneType"),
    ("owners.0.ca_pem", None, "worker_config.owners[0].ca_pem", "str", "NoneType"),
    ("owners.0.ca_pem", "not a certificate", "worker_config.owners[0].ca_pem",
     "a PEM certificate (the CA the broker's TLS certificate chains to)", "not a certificate"),
    ("owners.0.ca_pem", "x" * 50, "worker_config.owners[0].ca_pem",
     "a PEM certificate (the CA the broker's TLS certificate chains to)", "x" * 40),
    ("owners.0.card_keys", [KEY], "worker_config.owners[0].card_keys", OWNER_KEYS, "card_keys"),
    ("owners", ["https://kbs.acme.example"], "worker_config.owners[0]", "a JSON object", "str"),
    ("providers.0.card_keys", [{**KEY, "d": "secret"}], "worker_config.providers[0].card_keys", CARD_KEYS,
     [{**KEY, "d": "secret"}]),
    ("providers.0.card_keys", [], "worker_config.providers[0].card_keys", CARD_KEYS, []),
    ("providers.0.card_keys", [KEY, {**KEY, "kty": "EC"}], "worker_config.providers[0].card_keys", CARD_KEYS,
     [KEY, {**KEY, "kty": "EC"}]),
    ("providers.0.card_keys", [KEY, "key"], "worker_config.providers[0].card_keys", CARD_KEYS, [KEY, "key"]),
    ("providers.0.card_keys", KEY, "worker_config.providers[0].card_keys", "list", "dict"),
    ("providers.0.extra", 1, "worker_config.providers[0].extra", PROVIDER_KEYS, "extra"),
    ("providers", {}, "worker_config.providers", "list", "dict"),
    ("owners", "acme", "worker_config.owners", "list", "str"),
    ("tee", "sgx", "worker_config.tee", "one of ['simulated-sev-snp', 'configfs-tsm']", "sgx"),
    ("tee", None, "worker_config.tee", "str", "NoneType"),
    ("insecure_plaintext_baseline", True, "worker_config.insecure_plaintext_baseline", "false on a real TEE", True),
    ("insecure_plaintext_baseline", 0, "worker_config.insecure_plaintext_baseline", "bool", "int"),
    ("transport.queue", "x", "worker_config.transport.queue", "one of ['broker_url', 'result_backend']", "queue"),
    ("transport", "rediss://x", "worker_config.transport", "an object", "str"),
    ("transport.result_backend", 6380, "worker_config.transport.result_backend", "str", "int"),
    ("type", "cscore.worker-config/v0", "worker_config.type", "cscore.worker-config/v1", "cscore.worker-config/v0"),
])
def test_a_malformed_document_is_refused_naming_field_expected_and_actual(path: str, value: Any, field: str,
                                                                          expected: Any, actual: Any) -> None:
    with pytest.raises(FormatError) as refused:
        WorkerConfig.parse(_with(path, value))
    assert (refused.value.field, refused.value.expected, refused.value.actual) == (field, expected, actual)


def test_the_plaintext_baseline_is_refused_on_a_real_tee_with_the_reason() -> None:
    with pytest.raises(FormatError) as refused:
        WorkerConfig.parse(_with("insecure_plaintext_baseline", True))
    assert refused.value.hint == "the plaintext baseline is for benchmarks on the simulated TEE only"
    simulated = WorkerConfig.parse({**_with("insecure_plaintext_baseline", True), "tee": "simulated-sev-snp"})
    assert simulated.insecure_plaintext_baseline is True and simulated.to_json()["insecure_plaintext_baseline"]


def test_optional_members_default_and_a_url_loses_its_trailing_slash() -> None:
    bare = {k: v for k, v in _with("owners.0.url", "https://kbs.acme.example/").items()
            if k not in ("transport", "insecure_plaintext_baseline")}
    config = WorkerConfig.parse(bare)
    assert config.owner("acme").url == "https://kbs.acme.example"
    assert (config.transport, config.insecure_plaintext_baseline) == ((), False)
    assert config.to_json() == {**bare, "owners": [DOC["owners"][0]], "insecure_plaintext_baseline": False}
    assert "card_keys" not in config.owner("acme").to_json() and config.owner("acme").card_keys == ()
    # only the slashes at its end: a path's last character is the broker's URL as much as its host
    assert WorkerConfig.parse(_with("owners.0.url", "https://kbs.acme.example/kbsX//")).owner("acme").url == \
        "https://kbs.acme.example/kbsX"
    assert config.provider("spamco").card_keys == (KEY,)
    assert WorkerConfig.parse(DOC).transport == (("broker_url", DOC["transport"]["broker_url"]),
                                                 ("result_backend", DOC["transport"]["result_backend"]))


def test_duplicate_names_are_refused_per_kind_listing_the_names() -> None:
    for kind in ("owners", "providers"):
        twice = _with(kind, [DOC[kind][0], {**DOC[kind][0], "url": "https://other.example"}])
        with pytest.raises(FormatError) as refused:
            WorkerConfig.parse(twice)
        name = DOC[kind][0]["name"]
        assert (refused.value.field, refused.value.expected, refused.value.actual) == (
            f"worker_config.{kind}", "unique names", [name, name])
    # the same name as an owner and as a provider is two roles, not a duplicate
    both = _with("providers.0.name", "acme")
    assert WorkerConfig.parse(both).provider("acme").name == "acme"


def test_an_unknown_broker_is_refused_naming_the_role_and_the_brokers_served() -> None:
    config = WorkerConfig.parse(DOC)
    assert config.provider("spamco").url == "https://kbs.spamco.example"
    for lookup, role, served in ((config.owner, "owner", ["acme"]), (config.provider, "provider", ["spamco"])):
        with pytest.raises(FormatError) as refused:
            lookup("platform")
        assert (refused.value.field, refused.value.expected, refused.value.actual, refused.value.hint) == (
            f"{role}_broker", f"one of the worker configuration's {role}s {served}", "platform",
            f"this worker does not serve {role} 'platform'; the platform cannot add one without changing the "
            "measured configuration")
    with pytest.raises(FormatError):
        config.owner("spamco")  # a provider is not an owner


def test_host_data_and_mrconfigid_carry_exactly_the_32_byte_digest() -> None:
    from wire.worker_config import host_data

    digest = WorkerConfig.parse(DOC).digest()
    assert len(digest) == 32 and host_data(digest) == digest
    assert mrconfigid(digest) == digest + bytes(16)
    for wrong in (digest[:31], digest + b"\x00", b""):
        for make in (host_data, mrconfigid):
            with pytest.raises(FormatError) as refused:
                make(wrong)
            assert (refused.value.field, refused.value.expected, refused.value.actual) == (
                "config_digest", "32 bytes (SHA-256)", f"{len(wrong)} bytes")


def test_a_claims_field_gives_the_digest_only_when_mrconfigids_padding_is_zero() -> None:
    digest = "ab" * 32
    assert config_digest_from_claims(digest) == digest  # SEV-SNP HOST_DATA as it is
    assert config_digest_from_claims(digest + "00" * 16) == digest
    assert config_digest_from_claims(digest + "00" * 15 + "01") == digest + "00" * 15 + "01"  # not a padded digest
    assert config_digest_from_claims(digest + "00" * 17) == digest + "00" * 17  # 49 bytes: not MRCONFIGID


def test_a_document_on_disk_is_read_with_its_bytes_and_undecodable_json_is_named(tmp_path: Any) -> None:
    from wire.worker_config import load_worker_config

    path = tmp_path / "worker-config.json"
    path.write_text(json.dumps(DOC))
    config, raw = load_worker_config(path)
    assert config == WorkerConfig.parse(DOC) and raw == path.read_bytes()
    path.write_text("{not json")
    with pytest.raises(FormatError) as refused:
        load_worker_config(str(path))
    assert (refused.value.field, refused.value.expected, refused.value.hint) == (
        "worker_config", "JSON", f"file {path}")
    assert str(refused.value.actual).startswith("undecodable (Expecting property name enclosed in double quotes")
