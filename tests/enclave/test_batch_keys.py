"""The worker's per-batch key client (`enclave.worker._BatchKeys`) over the owner's broker, in process (the
production app and verifier, simulated SEV-SNP evidence): results are wrapped under the batch's result key as
the broker released it, for this batch and this model only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from enclave.kbs_client import KbsError
from enclave.worker import _BatchKeys
from tests.keybroker.inproc import CONFIG, GOOD, Env
from wire.keywrap import wrapped_version
from wire.shard import ShardSpec

MODEL, OTHER_MODEL = "sha256:" + "11" * 32, "sha256:" + "22" * 32
SPEC = ShardSpec(tenant="acme", batch_id="b-1", shard_index=0, input_key="incoming/acme/b-1/part-00000.parquet",
                 input_sha256="", row_group_start=0, row_group_end=1, model_name="spam", model_version=1,
                 model_digest=MODEL, owner_broker="owner", footer_key="f", column_key="c", result_key="res-1",
                 output_key="results/acme/b-1/shard-00000.parquet",
                 receipt_key="results/acme/b-1/shard-00000.receipt.jws")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    env = Env(tmp_path)
    env.admin.create_key("res-1", kind="result")
    env.admin.create_key("data-1")
    env.admin.rotate_key("res-1")  # results go under the key's current version, 2
    env.admin.grant("b-1", MODEL, [GOOD], ["res-1", "data-1"], config_digests=[CONFIG], rows=10)
    return env


def test_results_are_wrapped_under_the_current_result_key_released_once_for_the_batch_and_model(env: Env) -> None:
    keys = _BatchKeys(env.worker(), SPEC)
    first, second = keys.wrap("res-1", b"\x01" * 32), keys.wrap("res-1", b"\x02" * 32)
    assert wrapped_version(first) == 2 and wrapped_version(second) == 2
    # The owner opens them with its own broker: the key the worker wrapped under is the one that broker holds.
    assert env.admin.unwrap("res-1", first, batch_id="b-1") == b"\x01" * 32
    assert env.admin.unwrap("res-1", second, batch_id="b-1") == b"\x02" * 32
    releases = [(e["key_id"], e["batch_id"], e["model_digest"], e["decision"]) for e in env.admin.decisions()
                if e["operation"] == "release"]
    assert releases == [("res-1", "b-1", MODEL, "allow")]  # one release serves every shard of the batch


def test_a_result_key_asked_for_another_model_than_the_batch_granted_is_refused(env: Env) -> None:
    """The platform names another model in the shard spec: the release carries it, and the grant refuses it."""
    keys = _BatchKeys(env.worker(), dataclasses.replace(SPEC, model_digest=OTHER_MODEL))
    with pytest.raises(KbsError) as refused:
        keys.wrap("res-1", b"\x01" * 32)
    problem = refused.value.problem
    assert (problem["field"], problem["expected"], problem["actual"]) == ("model_digest", MODEL, OTHER_MODEL)


def test_the_owners_data_keys_are_unwrapped_under_the_batch_and_model(env: Env) -> None:
    wrapped = env.admin.wrap("data-1", b"\x03" * 32)
    assert _BatchKeys(env.worker(), SPEC).unwrap("data-1", wrapped) == b"\x03" * 32
    unwraps = [(e["key_id"], e["batch_id"], e["model_digest"], e["decision"]) for e in env.admin.decisions()
               if e["operation"] == "unwrap"]
    assert unwraps == [("data-1", "b-1", MODEL, "allow")]
