"""The worker's own checks on what the (untrusted) platform sends it."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest

from wire.shard import ShardSpec, ShardSpecError


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tenant": "acme", "batch_id": "b-1", "shard_index": 3, "input_key": "incoming/acme/b-1/part-00000.parquet",
        "input_sha256": "ab" * 32, "input_file_id": "ef" * 16,
        "row_group_start": 2, "row_group_end": 4, "model_name": "spam-filter",
        "model_version": 1, "model_digest": "sha256:" + "cd" * 32, "owner_broker": "owner",
        "footer_key": "acme.b-1.footer", "column_key": "acme.b-1.emails", "result_key": "acme.b-1.results",
        "output_key": "results/acme/b-1/shard-00003.parquet",
        "receipt_key": "results/acme/b-1/shard-00003.receipt.jws",
    }
    spec.update(changes)
    return spec


def test_a_well_formed_spec_is_accepted() -> None:
    spec = ShardSpec.from_dict(_spec())
    assert (spec.shard_index, spec.protection) == (3, "pme")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"output_key": "results/other/b-9/shard-00003.parquet"},
         "shard.output_key: expected results/acme/b-1/shard-00003.parquet"),
        ({"receipt_key": "results/acme/b-1/shard-00004.receipt.jws"}, "shard.receipt_key: expected"),
        ({"input_key": "incoming/other/b-1/part-00000.parquet"},
         "shard.input_key: expected a key under incoming/acme/b-1/"),
        ({"protection": "rot13"}, "shard.protection: expected 'pme' or 'none', got 'rot13'"),
        ({"row_group_start": 4}, r"shard.row_groups: expected 0 <= start < end, got \[4, 4\)"),
        ({"shard_index": "3"}, "shard.shard_index: expected int, got str"),
    ],
)
def test_a_spec_pointing_elsewhere_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ShardSpecError, match=message):
        ShardSpec.from_dict(_spec(**changes))


def test_a_missing_field_is_named() -> None:
    data = _spec()
    del data["model_digest"]
    with pytest.raises(ShardSpecError, match="shard.model_digest: expected a value, got nothing"):
        ShardSpec.from_dict(data)


@pytest.fixture
def worker_tasks(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The Celery app needs a transport URL to import; nothing connects in these tests.
    monkeypatch.setenv("CSCORE_CELERY_BROKER_URL", "memory://")
    monkeypatch.setenv("CSCORE_CELERY_RESULT_BACKEND", "cache+memory://")
    for name in ("tasks.worker_tasks", "tasks.celery_app"):
        sys.modules.pop(name, None)
    return importlib.import_module("tasks.worker_tasks")


def test_foreign_errors_reach_the_platform_by_type_only(worker_tasks: Any) -> None:
    @worker_tasks.contained
    def leaky() -> None:
        raise ValueError("From: ceo@acme.example Subject: CANARY-LEAK-123 quarterly numbers")

    with pytest.raises(worker_tasks.WorkerRefusal) as caught:
        leaky()
    assert "CANARY-LEAK-123" not in str(caught.value) and "ValueError" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_the_enclaves_own_refusals_keep_their_reason(worker_tasks: Any) -> None:
    @worker_tasks.contained
    def refused() -> None:
        ShardSpec.from_dict(_spec(output_key="results/x/y/shard-00003.parquet"))

    with pytest.raises(worker_tasks.WorkerRefusal, match="ShardSpecError: shard.output_key: expected"):
        refused()


def test_a_stored_receipt_of_another_shard_is_not_reused(worker_tasks: Any) -> None:
    spec = ShardSpec.from_dict(_spec())
    payload = {"batch_id": "b-1", "shard_index": 3, "model": {"digest": spec.model_digest},
               "input": {"key": spec.input_key, "sha256": "", "file_id": spec.input_file_id, "row_groups": [0, 2]},
               "output": {"key": "results/acme/b-1/shard-00003.1234.parquet"}}
    with pytest.raises(worker_tasks.ReceiptMismatch, match=r"receipt.input expected"):
        worker_tasks._check_receipt_matches(spec, payload)
    payload["input"]["row_groups"] = [2, 4]
    worker_tasks._check_receipt_matches(spec, payload)  # this shard's own receipt is fine
    payload["output"]["key"] = "results/acme/b-1/shard-00001.1234.parquet"
    with pytest.raises(worker_tasks.ReceiptMismatch, match="receipt.output.key expected under"):
        worker_tasks._check_receipt_matches(spec, payload)


def _scored(worker_tasks: Any, shard: int, evidence_sha256: str = "ee" * 32) -> Any:
    return worker_tasks.ScoredShard(output_key=f"results/acme/b-1/shard-{shard:05d}.0a0b.parquet", output=b"PAR1",
                                    output_sha256="", rows=1, receipt="r", usage="u",
                                    evidence={"report": "..."}, evidence_sha256=evidence_sha256)


def test_a_workers_evidence_is_stored_once_per_batch_and_everything_else_per_shard(worker_tasks: Any,
                                                                                  monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    stored: list[str] = []
    monkeypatch.setattr(worker_tasks.storage, "put_bytes", lambda key, data, content_type="": stored.append(key))
    for shard in (3, 4):
        spec = ShardSpec.from_dict(_spec(shard_index=shard, output_key=f"results/acme/b-1/shard-{shard:05d}.parquet",
                                         receipt_key=f"results/acme/b-1/shard-{shard:05d}.receipt.jws"))
        worker_tasks._store_before_receipt(spec, _scored(worker_tasks, shard))
    worker_tasks._store_before_receipt(ShardSpec.from_dict(_spec()), _scored(worker_tasks, 3, "ff" * 32))
    evidence = "results/acme/b-1/evidence/{}.json"
    assert sorted(stored) == sorted([
        evidence.format("ee" * 32), evidence.format("ff" * 32),  # once per attestation's evidence, per batch
        *(f"results/acme/b-1/shard-{s:05d}.0a0b.parquet" for s in (3, 4, 3)),
        *(f"usage/spam-filter/acme/b-1/shard-{s:05d}.jws" for s in (3, 4, 3))])


def test_a_card_is_fetched_once_per_worker_and_again_after_a_refused_shard(worker_tasks: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[str] = []

    def get_bytes(key: str) -> bytes:
        fetched.append(key)
        return f"card {len(fetched)}".encode()

    class Refusing:
        def score_shard(self, spec: ShardSpec, source: Any, card: str, model_object: Any) -> None:
            raise worker_tasks.ModelIntegrityError(f"{card}: refused")

    monkeypatch.setattr(worker_tasks.storage, "get_bytes", get_bytes)
    monkeypatch.setattr(worker_tasks.storage, "get_if_exists", lambda key: None)
    spec = ShardSpec.from_dict(_spec())
    assert [worker_tasks._card(spec), worker_tasks._card(spec)] == ["card 1", "card 1"]
    assert fetched == ["models/spam-filter/1/card.jws"]
    monkeypatch.setattr(worker_tasks, "_named_enclave", lambda task: Refusing())
    with pytest.raises(worker_tasks.WorkerRefusal, match="ModelIntegrityError: card 1: refused"):
        worker_tasks.score_shard(_spec())
    with pytest.raises(worker_tasks.WorkerRefusal, match="ModelIntegrityError: card 2: refused"):
        worker_tasks.score_shard(_spec())  # the refused card was not kept: fetched again
