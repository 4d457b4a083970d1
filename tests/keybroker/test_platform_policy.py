"""Minimum TCB and chip-id pinning (broker config or per key); policy changes are authenticated and logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation.simulated import SIM_CHIP_ID, SIM_TCB
from enclave.kbs_client import AttestedSession, KbsError
from enclave.tee import SimulatedSnpProvider
from sdk.broker_admin import BrokerAdmin, BrokerAdminError
from tests.keybroker.conftest import MEASUREMENT, BrokerProcess
from tests.keybroker.inproc import Env

CHIP = SIM_CHIP_ID.hex()  # the simulated TEE's chip id; its reported TCB is SIM_TCB
OTHER_CHIP = "ab" * 64


def _refusal(env: Env, wrapped: bytes) -> dict[str, object]:
    with pytest.raises(KbsError) as refused:
        env.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.status == 403 and refused.value.type.endswith("policy-denied")
    return refused.value.problem


def test_broker_min_tcb_refuses_older_firmware_naming_the_component(tmp_path: Path) -> None:
    env = Env(tmp_path, min_tcb={"snp": SIM_TCB.snp + 1, "fmc": 1})
    problem = _refusal(env, env.data_key())
    assert (problem["field"], problem["expected"], problem["actual"]) == ("tcb.snp", f">= {SIM_TCB.snp + 1}",
                                                                          SIM_TCB.snp)
    assert "min-tcb" in str(problem["detail"])
    denied = [e for e in env.admin.decisions() if e["decision"] == "deny"]
    assert denied[-1]["reason"].startswith("min-tcb") and denied[-1]["key_id"] == "data-1"


def test_key_settings_replace_the_broker_floor(tmp_path: Path) -> None:
    env = Env(tmp_path, min_tcb={"snp": SIM_TCB.snp + 1})
    wrapped = env.data_key()
    env.admin.set_policy("data-1", None, min_tcb={"snp": SIM_TCB.snp})  # this key accepts the older firmware
    assert env.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16
    assert env.admin.get_key("data-1")["min_tcb"] == {"snp": SIM_TCB.snp}
    env.admin.set_policy("data-1", None, min_tcb=None)  # back to the broker's
    assert _refusal(env, wrapped)["field"] == "tcb.snp"


def test_chip_pinning_from_config_and_per_key(tmp_path: Path) -> None:
    env = Env(tmp_path, chip_ids=[OTHER_CHIP])
    wrapped = env.data_key()
    problem = _refusal(env, wrapped)
    assert (problem["field"], problem["expected"], problem["actual"]) == ("chip_id", [OTHER_CHIP], CHIP)
    env.admin.set_policy("data-1", None, chip_ids=[CHIP, OTHER_CHIP])
    assert env.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16


def test_the_floor_holds_under_a_custom_policy_too(tmp_path: Path) -> None:
    env = Env(tmp_path)
    wrapped = env.data_key()
    env.admin.set_policy("data-1", "true", chip_ids=[OTHER_CHIP])
    assert _refusal(env, wrapped)["field"] == "chip_id"
    env.admin.set_policy("data-1", "claims.tcb.snp >= 3 && size(key.chip_ids) == 0", chip_ids=[])
    assert env.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16


@pytest.mark.parametrize("settings", [{"min_tcb": {"sn": 1}}, {"min_tcb": {"snp": 256}}, {"chip_ids": ["ab"]}])
def test_bad_settings_are_refused(env: Env, settings: dict[str, object]) -> None:
    env.admin.create_key("bad-settings")
    with pytest.raises(BrokerAdminError) as refused:
        env.admin.set_policy("bad-settings", None, **settings)  # type: ignore[arg-type]
    assert refused.value.status == 422 and refused.value.problem["field"] in settings


def test_bad_config_floor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_tcb"):
        Env(tmp_path, min_tcb={"firmware": 1})


def test_policy_change_is_authenticated_and_logged(env: Env) -> None:
    env.admin.create_key("audited", min_tcb={"snp": 2})
    before = env.admin.decisions()
    unauthenticated = env.admin._http.put("/admin/v0/keys/audited/policy", json={"policy": "true"},
                                          headers={"Authorization": "Bearer not-the-admin-token"})
    assert unauthenticated.status_code == 401
    assert env.admin.get_key("audited")["policy"] is None and env.admin.decisions() == before
    env.admin.set_policy("audited", "!claims.debug", chip_ids=[CHIP])
    policy, floor = env.admin.decisions()[-2:]
    assert (policy["operation"], policy["key_id"]) == ("admin.set_policy", "audited")
    assert policy["reason"] == "policy: !claims.debug; measurements: unchanged"  # as audit.collect parses it
    assert (floor["operation"], floor["key_id"]) == ("admin.set_platform_floor", "audited")
    assert floor["reason"] == f"chip_ids: ['{CHIP}']; min_tcb: {{'snp': 2}}"
    created = [e["reason"] for e in before if e["key_id"] == "audited"]
    assert created == ["created data key; policy: default; measurements: []", "chip_ids: broker default; "
                       "min_tcb: {'snp': 2}"]
    env.admin.set_policy("audited", "!claims.debug")  # settings left out: unchanged, nothing more to log
    assert env.admin.decisions()[-1]["operation"] == "admin.set_policy"


def test_simulated_tee_below_the_key_floor_is_refused(provider_broker: BrokerProcess, sim_dir: Path) -> None:
    admin: BrokerAdmin = provider_broker.admin()
    admin.create_key("floor-model", kind="model", measurements=[MEASUREMENT.hex()],
                     min_tcb={"snp": SIM_TCB.snp + 1}, chip_ids=[SIM_CHIP_ID.hex()])
    wrapped = admin.wrap("floor-model", b"m" * 32)
    worker = AttestedSession(provider_broker.url, SimulatedSnpProvider(sim_dir, MEASUREMENT),
                             ca_bundle=provider_broker.ca_bundle)
    with pytest.raises(KbsError) as refused:
        worker.unwrap("floor-model", wrapped, batch_id="", model_digest="")
    problem = refused.value.problem
    assert (problem["field"], problem["expected"], problem["actual"]) == ("tcb.snp", f">= {SIM_TCB.snp + 1}",
                                                                          SIM_TCB.snp)
    admin.set_policy("floor-model", None, min_tcb={"snp": SIM_TCB.snp, "fmc": 1})  # fmc: Turin only
    with pytest.raises(KbsError) as past_the_floor:  # the floor holds now; the model key's own clauses come next
        worker.unwrap("floor-model", wrapped, batch_id="", model_digest="")
    assert past_the_floor.value.problem["field"] == "grant"
