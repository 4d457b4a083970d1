"""The platform's manifest check: what it accepts, and the errors it gives for what it must not."""

from __future__ import annotations

from typing import Any

import pytest

from dags.cscore_platform.manifest import ManifestError, verify_manifest
from dags.cscore_platform.planning import plan_shards
from enclave.signing import generate_signing_key, sign_json

KEY = "incoming/acme/b-1/manifest.jws"


def _payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "cscore.manifest/v1", "tenant": "acme", "batch_id": "b-1", "created_at": 1,
        "objects": [{"key": "incoming/acme/b-1/part-00000.parquet", "size": 10, "sha256": "ab" * 32,
                     "rows": 450, "row_groups": 3, "file_id": "ef" * 16}],
        "model": {"name": "spam-filter", "version": 2, "digest": "sha256:" + "cd" * 32},
        "results": {"prefix": "results/acme/b-1/"},
        "key_broker": {"name": "owner", "url": "http://127.0.0.1:1", "footer_key": "acme/footer",
                       "column_key": "acme/emails",
                       "result_key": "acme/results"},
        "shard_row_groups": 2,
    }
    payload.update(changes)
    return payload


@pytest.fixture(scope="module")
def owner_key() -> Any:
    return generate_signing_key()


def test_signed_manifest_is_accepted_and_planned(owner_key: Any) -> None:
    token = sign_json(_payload(), owner_key).encode()
    manifest = verify_manifest(KEY, token, owner_key.as_dict(private=False))
    assert (manifest.tenant, manifest.batch_id, manifest.rows) == ("acme", "b-1", 450)
    shards = plan_shards(manifest)
    assert [(s["row_group_start"], s["row_group_end"]) for s in shards] == [(0, 2), (2, 3)]
    assert {s["input_file_id"] for s in shards} == {"ef" * 16}  # the worker checks it against the footer
    assert len({s["output_key"] for s in shards}) == 2


def test_manifest_signed_by_another_key_is_refused(owner_key: Any) -> None:
    token = sign_json(_payload(), generate_signing_key()).encode()
    with pytest.raises(ManifestError, match="signed by tenant acme's registered key"):
        verify_manifest(KEY, token, owner_key.as_dict(private=False))


def test_unsigned_manifest_is_refused(owner_key: Any) -> None:
    with pytest.raises(ManifestError, match="expected a compact JWS"):
        verify_manifest(KEY, b'{"type": "cscore.manifest/v1"}', owner_key.as_dict(private=False))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_id": "b-2"}, r"manifest.batch_id: expected 'b-1', got 'b-2'"),
        ({"objects": []}, "got an empty batch"),
        ({"objects": [{"key": "incoming/acme/b-1/x.parquet", "size": 1, "sha256": "0", "rows": 1, "row_groups": 1}]},
         r"objects\[0\].file_id: expected 32 hex digits \(the id in the file's encrypted footer\), got None"),
        ({"objects": [{"key": "incoming/other/b-1/x.parquet", "size": 1, "sha256": "0", "rows": 1,
                       "row_groups": 1}]}, r"objects\[0\].key: expected a data object under incoming/acme/b-1/"),
        ({"model": {"name": "m", "version": "1", "digest": "sha256:" + "0" * 64}},
         "manifest.model.version: expected int, got str"),
        ({"model": {"name": "m", "version": 1, "digest": "md5:0"}}, "manifest.model.digest: expected sha256"),
        ({"results": {"prefix": "results/other/"}}, "manifest.results.prefix: expected 'results/acme/b-1/'"),
        ({"shard_row_groups": 0}, "manifest.shard_row_groups: expected >= 1, got 0"),
    ],
)
def test_malformed_manifest_names_the_field(owner_key: Any, changes: dict[str, Any], message: str) -> None:
    token = sign_json(_payload(**changes), owner_key).encode()
    with pytest.raises(ManifestError, match=message):
        verify_manifest(KEY, token, owner_key.as_dict(private=False))


def test_key_outside_incoming_is_not_a_manifest(owner_key: Any) -> None:
    token = sign_json(_payload(), owner_key).encode()
    with pytest.raises(ManifestError, match="expected incoming/<tenant>/<batch>/manifest.jws"):
        verify_manifest("results/acme/b-1/manifest.jws", token, owner_key.as_dict(private=False))


@pytest.mark.parametrize("key", ["incoming/acme/b-1/manifest.jws\n", "incoming/acme\n/b-1/manifest.jws"])
def test_a_key_with_a_newline_is_no_manifest_of_the_batch_it_resembles(owner_key: Any, key: str) -> None:
    """S3 keys may hold a newline; `re.match` with `$` took 'incoming/acme/b-1/manifest.jws\\n' for acme's b-1."""
    token = sign_json(_payload(), owner_key).encode()
    with pytest.raises(ManifestError) as refused:
        verify_manifest(key, token, owner_key.as_dict(private=False))
    assert str(refused.value) == f"manifest key: expected incoming/<tenant>/<batch>/manifest.jws, got {key!r}"


def test_manifest_keys_come_from_trigger_payloads_and_conf_once() -> None:
    from dags.cscore_platform.manifest import MANIFEST_NAME
    from dags.cscore_platform.s3_events import object_keys

    def s3_event(*keys: str) -> dict[str, Any]:
        import json

        records = [{"s3": {"object": {"key": k}}} for k in keys]
        return {"Body": json.dumps({"Records": records})}

    extras = [
        {"from_trigger": True, "payload": {"status": "success", "message_batch": [
            s3_event("incoming/acme/b%2B1/manifest.jws"), {"Body": '{"Event": "s3:TestEvent"}'}]}},
        {"from_trigger": True, "payload": {"status": "success", "message_batch": [
            s3_event("incoming/acme/b%2B1/manifest.jws", "incoming/acme/b2/part-00000.parquet")]}},
    ]
    keys = object_keys(extras, {"manifest_keys": ["incoming/acme/b3/manifest.jws"]}, MANIFEST_NAME)
    assert keys == ["incoming/acme/b3/manifest.jws", "incoming/acme/b+1/manifest.jws"]
