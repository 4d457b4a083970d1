"""keybroker/models.py's field checks, in process: measurements, a key's TCB floor, chip ids and quota, each refusal
word for word (pydantic prefixes `Value error, ` and names the field in `loc`)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from keybroker.models import CreateKeyRequest, ResourceRequest, SetPolicyRequest

GOOD = "ab" * 48
CHIP = "0A" * 64


def _refusal(model: type[Any], **fields: Any) -> tuple[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as refused:
        model(**fields)
    (error,) = refused.value.errors()
    return error["loc"], error["msg"]


def test_absent_or_null_settings_stay_absent() -> None:
    request = SetPolicyRequest()
    assert (request.measurements, request.min_tcb, request.chip_ids, request.quota) == (None, None, None, None)
    key = CreateKeyRequest(key_id="k")
    assert (key.measurements, key.min_tcb, key.chip_ids, key.quota) == ([], None, None, None)
    nulls: dict[str, Any] = {"min_tcb": None, "chip_ids": None, "quota": None}  # null, as JSON sends it
    for given in (CreateKeyRequest(key_id="k", **nulls), SetPolicyRequest(**nulls)):
        assert (given.min_tcb, given.chip_ids, given.quota) == (None, None, None)
    assert SetPolicyRequest(measurements=None).measurements is None


def test_settings_given_are_checked_and_kept_lower_case() -> None:
    key = CreateKeyRequest(key_id="k", measurements=[GOOD.upper(), "cd" * 32], min_tcb={"snp": 255, "tee": 0},
                           chip_ids=[CHIP], quota={"rows": 5, "period_s": 60})
    assert key.measurements == [GOOD, "cd" * 32]
    assert (key.min_tcb, key.chip_ids, key.quota) == ({"snp": 255, "tee": 0}, [CHIP.lower()], {"rows": 5,
                                                                                               "period_s": 60})
    policy = SetPolicyRequest(measurements=[GOOD.upper()], min_tcb={"snp": 1}, chip_ids=[], quota={"rows": 1,
                                                                                                  "period_s": 1})
    assert (policy.measurements, policy.min_tcb, policy.chip_ids, policy.quota) == (
        [GOOD], {"snp": 1}, [], {"rows": 1, "period_s": 1})
    assert ResourceRequest(value_jwe="x", measurements=[GOOD.upper()]).measurements == [GOOD]


def test_a_measurement_that_is_not_32_to_64_bytes_of_hex_is_refused_naming_the_first() -> None:
    first, second = "zz" * 48, "ab" * 31
    assert _refusal(CreateKeyRequest, key_id="k", measurements=[GOOD, first, second]) == (
        ("measurements",), f"Value error, measurements must be 32-64 bytes of hex, got {first[:40]!r}")
    assert _refusal(SetPolicyRequest, measurements=[second]) == (
        ("measurements",), f"Value error, measurements must be 32-64 bytes of hex, got {second[:40]!r}")


def test_a_tcb_floor_out_of_range_or_of_another_component_is_refused() -> None:
    assert _refusal(CreateKeyRequest, key_id="k", min_tcb={"snp": 256}) == (
        ("min_tcb",), "Value error, min_tcb: expected integers 0..255, got {'snp': 256}")
    assert _refusal(SetPolicyRequest, min_tcb={"pcr": 1}) == (
        ("min_tcb",), "Value error, min_tcb: expected a table with keys from "
                      "['bootloader', 'tee', 'snp', 'microcode', 'fmc'], got {'pcr': 1}")


def test_a_chip_id_that_is_not_64_bytes_of_hex_is_refused() -> None:
    assert _refusal(CreateKeyRequest, key_id="k", chip_ids=[CHIP[:-2]]) == (
        ("chip_ids",), f"Value error, chip_ids: expected a list of 64-byte hex chip ids, got {[CHIP[:-2]]}")
    assert _refusal(SetPolicyRequest, chip_ids=["zz" * 64]) == (
        ("chip_ids",), f"Value error, chip_ids: expected a list of 64-byte hex chip ids, got {['zz' * 64]}")


@pytest.mark.parametrize("quota", [{"rows": 5}, {"period_s": 60}, {"rows": 5, "period_s": 60, "burst": 1},
                                   {"rows": 0, "period_s": 60}, {"rows": 5, "period_s": -1},
                                   {"rows": True, "period_s": 60}, {"rows": 5, "period_s": 1.5}, {}])
def test_a_quota_other_than_positive_rows_and_period_is_refused(quota: dict[str, Any]) -> None:
    expected = f"Value error, quota: expected {{'rows': int > 0, 'period_s': int > 0}}, got {quota!r}"
    assert _refusal(CreateKeyRequest, key_id="k", quota=quota) == (("quota",), expected)
    assert _refusal(SetPolicyRequest, quota=quota) == (("quota",), expected)
