"""What the platform publishes for the parties to check: the workers' configuration document; and the
operator's approval of tenant registrations (wire.tenant).

The platform uploads it to `platform/worker-config.json`; an owner reads it, checks that it names the
owner's own broker at the URL the owner uses and pinned to the CA that broker's certificate chains to, and
grants its digest (the workers' HOST_DATA). A different
document (another broker URL, another CA, another TEE mode) has another digest, so no grant covers it.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc.jwk import OKPKey

from enclave.kbs_client import CA_ENV, broker_tls
from sdk.storage import ObjectStore
from wire.errors import FormatError
from wire.tenant import approval_key, request_key, sign_approval, verify_approval, verify_request
from wire.worker_config import WorkerConfig

WORKER_CONFIG_KEY = "platform/worker-config.json"


class WorkerConfigError(ValueError):
    """The platform's worker configuration cannot be granted by this party; the message says why."""


def published_worker_config(store: ObjectStore) -> WorkerConfig:
    """The workers' configuration as the platform published it (WorkerConfigError if absent or malformed)."""
    raw = store.get_if_exists(WORKER_CONFIG_KEY)
    if raw is None:
        raise WorkerConfigError(f"s3://{store.bucket}/{WORKER_CONFIG_KEY}: expected the platform's worker "
                                "configuration, found nothing; ask the platform operator to publish it")
    try:
        return WorkerConfig.parse(json.loads(raw))
    except (ValueError, FormatError) as exc:
        raise WorkerConfigError(f"s3://{store.bucket}/{WORKER_CONFIG_KEY}: {exc}") from exc


def config_for_owner(config: WorkerConfig, broker_name: str, broker_url: str, *, provider: str | None = None,
                     trusted_keys: Sequence[dict[str, Any]] = ()) -> str:
    """The digest (hex) an owner grants, after checking the configuration names its broker at its URL, pinned to
    a CA the broker's certificate chains to (the certificate as this party's own trust verifies it: two TLS
    handshakes with the broker). With `provider` (the broker the chosen model's card names), every card key the
    configuration lists for it must be one of `trusted_keys` (the provider keys this party pinned): a worker
    enforces the terms and the contract (which tensor is the spam probability) of any card those keys sign.
    Raises WorkerConfigError naming the field."""
    try:
        listed = config.owner(broker_name)
    except FormatError as exc:
        raise WorkerConfigError(f"worker configuration {config.digest_hex()}: {exc}") from exc
    if listed.url.rstrip("/") != broker_url.rstrip("/"):
        raise WorkerConfigError(f"worker configuration {config.digest_hex()}: owners[{broker_name}].url expected "
                                f"{broker_url} (your broker), got {listed.url}; do not grant it")
    # The URL alone is not the broker: a worker pinned to a CA of the platform's would take the platform's
    # relay at that URL for this broker, and wrap results under the result key it "releases".
    _check_own_cas(config, broker_name, listed.ca_pem)
    yours = _peer_certificate(listed.url, None)
    if yours is None or _peer_certificate(listed.url, listed.ca_pem) != yours:
        raise WorkerConfigError(f"worker configuration {config.digest_hex()}: owners[{broker_name}].ca_pem expected "
                                f"the CA your broker's certificate (as your own trust verifies it) chains to, got "
                                f"another CA; do not grant it")
    if provider is not None:
        _check_card_keys(config, provider, trusted_keys)
    return config.digest_hex()


def _check_card_keys(config: WorkerConfig, provider: str, trusted_keys: Sequence[dict[str, Any]]) -> None:
    """Every card key the configuration lists for `provider` is one this party trusts."""
    try:
        listed = config.provider(provider)
    except FormatError as exc:
        raise WorkerConfigError(f"worker configuration {config.digest_hex()}: {exc}") from exc
    trusted = {OKPKey.import_key(k).thumbprint() for k in trusted_keys}
    for key in listed.card_keys:
        thumbprint = OKPKey.import_key(key).thumbprint()
        if thumbprint not in trusted:
            raise WorkerConfigError(f"worker configuration {config.digest_hex()}: providers[{provider}].card_keys "
                                    f"expected only provider keys you pinned {sorted(trusted)}, got {thumbprint}; "
                                    "a worker would take the cards it signs for that provider's: do not grant it")


def _check_own_cas(config: WorkerConfig, broker_name: str, ca_pem: str) -> None:
    """Every CA the configuration pins for this party's broker is one this party's own trust holds: a CA of the
    platform's bundled beside the broker's would let its relay pass for the broker too."""
    source = os.environ.get(CA_ENV) or ssl.get_default_verify_paths().cafile or ""
    try:
        yours = {c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(Path(source).read_bytes())}
    except (OSError, ValueError):
        yours = set()
    for ca in x509.load_pem_x509_certificates(ca_pem.encode()):
        if ca.public_bytes(Encoding.DER) not in yours:
            raise WorkerConfigError(f"worker configuration {config.digest_hex()}: owners[{broker_name}].ca_pem "
                                    f"expected only CAs your own trust holds ({source}), got one more "
                                    f"({ca.subject.rfc4514_string()}); do not grant it")


def _peer_certificate(url: str, ca_pem: str | None) -> bytes | None:
    """The DER certificate the broker at `url` presents, verified against `ca_pem`, or (None) this party's own
    trust ($CSCORE_BROKER_CA, else the system roots); None when it does not verify."""
    parts = urlsplit(url)
    trust = broker_tls(url, ca_pem=ca_pem)
    context = trust if isinstance(trust, ssl.SSLContext) else ssl.create_default_context()
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 443), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            return tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError:
        return None


class TenantApprovalError(ValueError):
    """The operator cannot approve this registration request; the message says why and what to do."""


def approver_key(home: Path) -> OKPKey:
    """The operator's Ed25519 approval key, created on first use in `home` (mode 0600). Its public half is
    what the DAG pins (Airflow Variable `cscore_tenant_approver`)."""
    path = home / "tenant-approver.jwk"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(OKPKey.generate_key("Ed25519", private=True).as_dict(private=True)))
    return OKPKey.import_key(json.loads(path.read_text()))


def approve_tenant(store: ObjectStore, tenant: str, thumbprint: str, approver: OKPKey, *,
                   replace: bool = False) -> str:
    """Approve the uploaded request of `tenant` if its key has the thumbprint the owner gave out of band.

    Writes `platform/tenants/<tenant>.jws` and returns its key. Refuses (TenantApprovalError) a missing or
    badly signed request, another key than `thumbprint`, and a tenant already approved with another key
    unless `replace` (key rotation, decided by the operator).
    """
    raw = store.get_if_exists(request_key(tenant))
    if raw is None:
        raise TenantApprovalError(f"s3://{store.bucket}/{request_key(tenant)}: expected the tenant's registration "
                                  "request, found nothing; the owner runs `cscore owner register` first")
    try:
        request = verify_request(raw.decode())
    except FormatError as exc:
        raise TenantApprovalError(f"s3://{store.bucket}/{request_key(tenant)}: {exc}; do not approve it") from exc
    if request.tenant != tenant or request.thumbprint != thumbprint:
        raise TenantApprovalError(
            f"tenant {tenant}: expected a request for key {thumbprint} (as the owner told you), got tenant "
            f"{request.tenant!r} with key {request.thumbprint}; do not approve it, ask the owner")
    existing = store.get_if_exists(approval_key(tenant))
    if existing is not None and not replace:
        current = verify_approval(existing.decode(), dict(approver.as_dict(private=False)), tenant)
        if current.thumbprint != thumbprint:
            raise TenantApprovalError(f"tenant {tenant} is approved with key {current.thumbprint}; approving "
                                      f"{thumbprint} replaces it: pass --replace if the owner rotated its key")
    store.put(approval_key(tenant), sign_approval(raw.decode(), approver, now=time.time()).encode(),
              content_type="application/jose")
    return approval_key(tenant)
