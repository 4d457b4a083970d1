"""Tenant registration through object storage: the owner requests, the operator approves, the DAG checks.

Each refusal has a test built from the well-formed forgery it stops: a request planted under another's
tenant name, an approval signed by someone else, an approval of one tenant copied to another, a request not
signed by the key it carries, and a manifest signed by a key other than the approved one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from joserfc import jws
from joserfc.jwk import OKPKey
from moto import mock_aws

from dags.cscore_platform.batch_store import BatchStore
from dags.cscore_platform.manifest import ManifestError
from sdk.owner import register_tenant
from sdk.party import Party
from sdk.platform import TenantApprovalError, approve_tenant, approver_key
from sdk.storage import ObjectStore
from wire.canonical import canonical_json
from wire.errors import FormatError
from wire.tenant import (
    REQUEST_TYP,
    REQUEST_TYPE,
    approval_key,
    request_key,
    sign_request,
    verify_approval,
    verify_request,
)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[ObjectStore, BatchStore, OKPKey]]:
    """One bucket seen by both sides: the parties' ObjectStore and the DAG's BatchStore (through aws_default)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "CSCORE_BUCKET": "cscore",
                        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws",
                                                                "extra": {"region_name": "us-east-1"}})}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CSCORE_S3_ENDPOINT", raising=False)
    approver = approver_key(tmp_path / "platform")
    monkeypatch.setenv("AIRFLOW_VAR_CSCORE_TENANT_APPROVER", json.dumps(approver.as_dict(private=False)))
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="cscore")
        yield ObjectStore(bucket="cscore"), BatchStore(bucket="cscore"), approver


def _owner(tmp_path: Path, name: str = "owner") -> Party:
    return Party(home=tmp_path / name, broker_url="https://unused")


def test_requested_and_approved_key_is_the_one_the_dag_uses(s3: tuple[ObjectStore, BatchStore, OKPKey],
                                                            tmp_path: Path) -> None:
    store, platform, approver = s3
    owner = _owner(tmp_path)
    request = register_tenant(owner, "acme", store)
    assert request.key == owner.public_key() and store.exists(request_key("acme"))
    with pytest.raises(ManifestError, match="expected a tenant approved by the platform operator"):
        platform.tenant_key("acme")  # requested, not yet approved: no manifest of acme's verifies
    approve_tenant(store, "acme", request.thumbprint, approver)
    assert platform.tenant_key("acme") == {k: owner.public_key()[k] for k in ("kty", "crv", "x")}
    assert approver_key(tmp_path / "platform").thumbprint() == approver.thumbprint()  # kept, mode 0600
    assert (tmp_path / "platform" / "tenant-approver.jwk").stat().st_mode & 0o777 == 0o600


def test_a_request_planted_under_the_tenants_name_is_refused(s3: tuple[ObjectStore, BatchStore, OKPKey],
                                                             tmp_path: Path) -> None:
    store, platform, approver = s3
    honest = register_tenant(_owner(tmp_path), "acme", store).thumbprint
    register_tenant(_owner(tmp_path, "mallory"), "acme", store)  # overwrites the request with another key
    with pytest.raises(TenantApprovalError, match=f"expected a request for key {honest}"):
        approve_tenant(store, "acme", honest, approver)
    assert not store.exists(approval_key("acme"))


def test_an_approved_key_is_replaced_only_on_purpose(s3: tuple[ObjectStore, BatchStore, OKPKey],
                                                     tmp_path: Path) -> None:
    store, platform, approver = s3
    approve_tenant(store, "acme", register_tenant(_owner(tmp_path), "acme", store).thumbprint, approver)
    rotated = register_tenant(_owner(tmp_path, "rotated"), "acme", store)
    with pytest.raises(TenantApprovalError, match="pass --replace"):
        approve_tenant(store, "acme", rotated.thumbprint, approver)
    approve_tenant(store, "acme", rotated.thumbprint, approver, replace=True)
    assert platform.tenant_key("acme")["x"] == rotated.key["x"]


def test_an_approval_not_signed_by_the_pinned_approver_is_refused(s3: tuple[ObjectStore, BatchStore, OKPKey],
                                                                  tmp_path: Path) -> None:
    store, platform, _ = s3
    request = register_tenant(_owner(tmp_path), "acme", store)
    forger = OKPKey.generate_key("Ed25519", private=True)  # e.g. the platform's bucket writer, not the operator
    approve_tenant(store, "acme", request.thumbprint, forger)
    with pytest.raises(ManifestError, match=r"tenant_approval\.signature"):
        platform.tenant_key("acme")


def test_an_approval_copied_to_another_tenant_is_refused(s3: tuple[ObjectStore, BatchStore, OKPKey],
                                                         tmp_path: Path) -> None:
    store, platform, approver = s3
    approve_tenant(store, "acme", register_tenant(_owner(tmp_path), "acme", store).thumbprint, approver)
    store.put(approval_key("globex"), store.get(approval_key("acme")))
    with pytest.raises(ManifestError, match=r"tenant_approval\.tenant: expected globex, got 'acme'"):
        platform.tenant_key("globex")


def test_a_request_not_signed_by_the_key_it_carries_is_refused(s3: tuple[ObjectStore, BatchStore, OKPKey],
                                                               tmp_path: Path) -> None:
    store, _, approver = s3
    victim, mallory = _owner(tmp_path).signing_key(), _owner(tmp_path, "mallory").signing_key()
    payload = {"type": REQUEST_TYPE, "tenant": "acme", "key": dict(victim.as_dict(private=False)),
               "requested_at": int(time.time())}
    forged = jws.serialize_compact({"alg": "Ed25519", "typ": REQUEST_TYP}, canonical_json(payload), mallory,
                                   algorithms=["Ed25519"])
    with pytest.raises(FormatError, match=r"tenant_request\.signature"):
        verify_request(forged)
    store.put(request_key("acme"), forged.encode())
    with pytest.raises(TenantApprovalError, match=r"tenant_request\.signature"):
        approve_tenant(store, "acme", victim.thumbprint(), approver)


def test_the_approver_must_be_configured(s3: tuple[ObjectStore, BatchStore, OKPKey], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store, platform, approver = s3
    approve_tenant(store, "acme", register_tenant(_owner(tmp_path), "acme", store).thumbprint, approver)
    monkeypatch.delenv("AIRFLOW_VAR_CSCORE_TENANT_APPROVER")
    with pytest.raises(ManifestError, match="cscore_tenant_approver"):
        platform.tenant_key("acme")


def test_a_private_key_is_never_accepted_as_the_registered_key(tmp_path: Path) -> None:
    key = _owner(tmp_path).signing_key()
    token = sign_request("acme", key, now=time.time())
    approved = verify_request(token)
    assert "d" not in approved.key
    with pytest.raises(FormatError, match="no d"):
        verify_approval(token, dict(key.as_dict(private=True)), "acme")
