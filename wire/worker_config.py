"""The worker configuration document: everything that decides whom a confidential worker trusts.

Its digest is bound at launch (SEV-SNP HOST_DATA, TDX MRCONFIGID; Confidential Containers calls this
measured init data), so a worker learns each broker's identity (URL plus the CA its TLS certificate must
chain to) and the parties it serves from what was measured, never from a task argument or an environment
variable. Key brokers pin the digest in their policies (an owner's grant names it).

Shape (`cscore.worker-config/v1`)::

    {"type": "cscore.worker-config/v1",
     "tee": "simulated-sev-snp" | "configfs-tsm",
     "owners":    [{"name": "acme", "url": "https://...", "ca_pem": "-----BEGIN CERTIFICATE-----..."}],
     "providers": [{"name": "provider", "url": "https://...", "ca_pem": "...", "card_keys": [<Ed25519 JWK>]}],
     "insecure_plaintext_baseline": false,
     "transport": {"broker_url": "rediss://...", "result_backend": "rediss://..."}}   (optional)

`transport` names the Celery transport for guests that get nothing else at launch (`infra/image/init`); it is
untrusted (it carries ciphertext and object keys only) but measured like the rest.

`card_keys` are the public keys the provider signs model cards with: the worker enforces a card's terms
(output precision, row quota) only from a card it verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wire.canonical import canonical_json, sha256_hex
from wire.errors import FormatError, refuse_unknown, require, typed_document

CONFIG_TYPE = "cscore.worker-config/v1"
TEES = ("simulated-sev-snp", "configfs-tsm")
HOST_DATA_SIZE = 32  # SEV-SNP HOST_DATA (AMD SEV-SNP ABI, MSG_REPORT_RSP: 32 bytes)
MRCONFIGID_SIZE = 48  # TDX MRCONFIGID (Intel TDX module ABI: SHA384-sized field)
CONFIG_ENV = "CSCORE_WORKER_CONFIG"  # path of the document; its content is what the evidence binds
_BROKER_KEYS = {"name", "url", "ca_pem"}


@dataclass(frozen=True)
class BrokerIdentity:
    """One key broker as the worker knows it: a name used in manifests and specs, its URL, its TLS CA."""

    name: str
    url: str
    ca_pem: str
    card_keys: tuple[dict[str, Any], ...] = ()  # providers only: public keys that sign their model cards

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "url": self.url, "ca_pem": self.ca_pem}
        if self.card_keys:
            doc["card_keys"] = list(self.card_keys)
        return doc


@dataclass(frozen=True)
class WorkerConfig:
    """A parsed worker configuration document (see the module docstring)."""

    tee: str
    owners: tuple[BrokerIdentity, ...]
    providers: tuple[BrokerIdentity, ...]
    insecure_plaintext_baseline: bool = False
    transport: tuple[tuple[str, str], ...] = ()  # (("broker_url", ...), ("result_backend", ...)) or empty

    def to_json(self) -> dict[str, Any]:
        """The document as JSON (what is hashed, published and passed to the worker)."""
        doc = {"type": CONFIG_TYPE, "tee": self.tee, "owners": [o.to_json() for o in self.owners],
               "providers": [p.to_json() for p in self.providers],
               "insecure_plaintext_baseline": self.insecure_plaintext_baseline}
        if self.transport:
            doc["transport"] = dict(self.transport)
        return doc

    def digest(self) -> bytes:
        """SHA-256 of the canonical document: 32 bytes, exactly SEV-SNP HOST_DATA."""
        return bytes.fromhex(sha256_hex(canonical_json(self.to_json())))

    def digest_hex(self) -> str:
        """`digest()` as lower-case hex: how policies, grants and claims (`host_data`) name it."""
        return self.digest().hex()

    def owner(self, name: str) -> BrokerIdentity:
        """The owner broker called `name`; FormatError if this worker does not serve it."""
        return _named(self.owners, name, "owner")

    def provider(self, name: str) -> BrokerIdentity:
        """The provider broker called `name`; FormatError if this worker does not serve it."""
        return _named(self.providers, name, "provider")

    @classmethod
    def parse(cls, doc: Any) -> WorkerConfig:
        """Strict parse; raises FormatError naming the field."""
        doc = typed_document(doc, "worker_config", CONFIG_TYPE,
                             {"type", "tee", "owners", "providers", "insecure_plaintext_baseline", "transport"})
        tee = require(doc, "tee", str, where="worker_config")
        if tee not in TEES:
            raise FormatError("worker_config.tee", f"one of {list(TEES)}", tee)
        owners = tuple(_broker(o, f"worker_config.owners[{i}]", provider=False)
                       for i, o in enumerate(require(doc, "owners", list, where="worker_config")))
        providers = tuple(_broker(p, f"worker_config.providers[{i}]", provider=True)
                          for i, p in enumerate(require(doc, "providers", list, where="worker_config")))
        for kind, group in (("owners", owners), ("providers", providers)):
            names = [b.name for b in group]
            if len(set(names)) != len(names):
                raise FormatError(f"worker_config.{kind}", "unique names", names)
        plaintext = doc.get("insecure_plaintext_baseline", False)
        if not isinstance(plaintext, bool):
            raise FormatError("worker_config.insecure_plaintext_baseline", "bool", type(plaintext).__name__)
        if plaintext and tee != "simulated-sev-snp":
            raise FormatError("worker_config.insecure_plaintext_baseline", "false on a real TEE", True,
                              "the plaintext baseline is for benchmarks on the simulated TEE only")
        return cls(tee, owners, providers, plaintext, _transport(doc.get("transport")))


def load_worker_config(path: str | Path) -> tuple[WorkerConfig, bytes]:
    """Read and parse the document at `path`; returns it and the raw bytes (FormatError, OSError)."""
    raw = Path(path).read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FormatError("worker_config", "JSON", f"undecodable ({exc})", f"file {path}") from exc
    return WorkerConfig.parse(doc), raw


def host_data(config_digest: bytes) -> bytes:
    """SEV-SNP HOST_DATA for a configuration digest (the 32 bytes themselves)."""
    _check_digest(config_digest)
    return config_digest


def mrconfigid(config_digest: bytes) -> bytes:
    """TDX MRCONFIGID for a configuration digest: the digest, then 16 zero bytes (48 in all)."""
    _check_digest(config_digest)
    return config_digest + bytes(MRCONFIGID_SIZE - HOST_DATA_SIZE)


def config_digest_from_claims(host_data_hex: str) -> str:
    """The configuration digest an evidence field carries (HOST_DATA as is; MRCONFIGID's first 32 bytes)."""
    value = bytes.fromhex(host_data_hex)
    if len(value) == MRCONFIGID_SIZE and not any(value[HOST_DATA_SIZE:]):
        value = value[:HOST_DATA_SIZE]
    return value.hex()


def _check_digest(digest: bytes) -> None:
    if len(digest) != HOST_DATA_SIZE:
        raise FormatError("config_digest", f"{HOST_DATA_SIZE} bytes (SHA-256)", f"{len(digest)} bytes")


def _named(group: tuple[BrokerIdentity, ...], name: str, role: str) -> BrokerIdentity:
    for broker in group:
        if broker.name == name:
            return broker
    raise FormatError(f"{role}_broker", f"one of the worker configuration's {role}s {[b.name for b in group]}",
                      name, f"this worker does not serve {role} '{name}'; the platform cannot add one without "
                      "changing the measured configuration")


def _transport(doc: Any) -> tuple[tuple[str, str], ...]:
    if doc is None:
        return ()
    if not isinstance(doc, dict):
        raise FormatError("worker_config.transport", "an object", type(doc).__name__)
    refuse_unknown(doc, {"broker_url", "result_backend"}, where="worker_config.transport")
    return tuple((name, require(doc, name, str, where="worker_config.transport"))
                 for name in ("broker_url", "result_backend"))


def _broker(doc: Any, where: str, *, provider: bool) -> BrokerIdentity:
    if not isinstance(doc, dict):
        raise FormatError(where, "a JSON object", type(doc).__name__)
    refuse_unknown(doc, _BROKER_KEYS | ({"card_keys"} if provider else set()), where=where)
    name = require(doc, "name", str, where=where)
    url = require(doc, "url", str, where=where).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise FormatError(f"{where}.url", "an https:// URL (the worker authenticates every broker by TLS)", url)
    ca_pem = require(doc, "ca_pem", str, where=where)
    if "-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise FormatError(f"{where}.ca_pem", "a PEM certificate (the CA the broker's TLS certificate chains to)",
                          ca_pem[:40])
    keys: tuple[dict[str, Any], ...] = ()
    if provider:
        raw_keys = require(doc, "card_keys", list, where=where)
        if not raw_keys or not all(isinstance(k, dict) and k.get("kty") == "OKP" and "d" not in k for k in raw_keys):
            raise FormatError(f"{where}.card_keys", "one or more public Ed25519 JWKs", raw_keys)
        keys = tuple(raw_keys)
    return BrokerIdentity(name, url, ca_pem, keys)
