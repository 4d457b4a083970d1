"""wire/shard.py on its own: the shard instruction the untrusted platform sends, each refusal word for word at its
bounds, the operator's limits, the input binding and the outcome's round trip (milliseconds a test)."""

from __future__ import annotations

from typing import Any

import pytest

from wire.errors import FormatError
from wire.shard import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_MS_PER_ROW,
    ShardOutcome,
    ShardSpec,
    ShardSpecError,
    input_binding,
    parse_limits,
)

SPEC: dict[str, Any] = {
    "tenant": "acme", "batch_id": "b-1", "shard_index": 3, "input_key": "incoming/acme/b-1/part-00000.parquet",
    "input_sha256": "ab" * 32, "row_group_start": 0, "row_group_end": 1, "model_name": "spam-filter",
    "model_version": 1, "model_digest": "sha256:" + "cd" * 32, "owner_broker": "owner", "footer_key": "f",
    "column_key": "c", "result_key": "r", "output_key": "results/acme/b-1/shard-00003.parquet",
    "receipt_key": "results/acme/b-1/shard-00003.receipt.jws",
}


def _refusal(**changes: Any) -> str:
    with pytest.raises(ShardSpecError) as refused:
        ShardSpec.from_dict({**SPEC, **changes})
    return str(refused.value)


def test_a_spec_round_trips_with_its_optional_fields_defaulted() -> None:
    spec = ShardSpec.from_dict(SPEC)
    assert spec.to_dict() == {**SPEC, "protection": "pme", "input_file_id": "", "max_ms_per_row": 1_000,
                              "max_memory_mib": 4_096}
    assert (DEFAULT_MS_PER_ROW, DEFAULT_MEMORY_MIB) == (1_000, 4_096)
    full = {**SPEC, "protection": "none", "input_file_id": "ef" * 16, "max_ms_per_row": 3_600_000,
            "max_memory_mib": 1 << 20}
    assert ShardSpec.from_dict(full).to_dict() == full
    assert ShardSpec.from_dict({**full, "max_ms_per_row": 1, "max_memory_mib": 64}).max_memory_mib == 64


@pytest.mark.parametrize(("name", "value", "actual"), [
    ("shard_index", True, "bool"), ("model_version", "1", "str"), ("row_group_end", 1.0, "float"),
    ("tenant", 3, "int"), ("input_file_id", None, "NoneType"), ("protection", b"pme", "bytes"),
    ("max_memory_mib", False, "bool")])
def test_a_field_of_the_wrong_type_is_refused_naming_it(name: str, value: Any, actual: str) -> None:
    expected = "int" if name in ("shard_index", "model_version", "row_group_end", "max_memory_mib") else "str"
    assert _refusal(**{name: value}) == f"shard.{name}: expected {expected}, got {actual}"


@pytest.mark.parametrize("name", ["tenant", "shard_index", "row_group_start", "receipt_key", "owner_broker"])
def test_a_missing_required_field_is_named(name: str) -> None:
    with pytest.raises(ShardSpecError) as refused:
        ShardSpec.from_dict({k: v for k, v in SPEC.items() if k != name})
    assert str(refused.value) == f"shard.{name}: expected a value, got nothing"


@pytest.mark.parametrize(("start", "end"), [(-1, 1), (1, 1), (2, 1)])
def test_a_row_group_range_that_is_empty_or_negative_is_refused(start: int, end: int) -> None:
    assert _refusal(row_group_start=start, row_group_end=end) == (
        f"shard.row_groups: expected 0 <= start < end, got [{start}, {end})")


@pytest.mark.parametrize(("name", "value", "bounds"), [
    ("max_ms_per_row", 0, "1..3600000"), ("max_ms_per_row", 3_600_001, "1..3600000"),
    ("max_memory_mib", 63, "64..1048576"), ("max_memory_mib", (1 << 20) + 1, "64..1048576")])
def test_a_limit_just_outside_its_range_is_refused(name: str, value: int, bounds: str) -> None:
    assert _refusal(**{name: value}) == f"shard.{name}: expected {bounds}, got {value}"


@pytest.mark.parametrize(("changes", "message"), [
    ({"output_key": "results/acme/b-1/shard-3.parquet"},
     "shard.output_key: expected results/acme/b-1/shard-00003.parquet, got results/acme/b-1/shard-3.parquet"),
    ({"receipt_key": "results/acme/b-2/shard-00003.receipt.jws"},
     "shard.receipt_key: expected results/acme/b-1/shard-00003.receipt.jws, got "
     "results/acme/b-2/shard-00003.receipt.jws"),
    ({"input_key": "incoming/acme/b-10/x.parquet"},
     "shard.input_key: expected a key under incoming/acme/b-1/, got incoming/acme/b-10/x.parquet"),
    ({"input_key": "incoming/acme/b-1"}, "shard.input_key: expected a key under incoming/acme/b-1/, got "
                                         "incoming/acme/b-1"),
    ({"protection": "PME"}, "shard.protection: expected 'pme' or 'none', got 'PME'"),
    ({"protection": ""}, "shard.protection: expected 'pme' or 'none', got ''"),
])
def test_a_path_or_protection_outside_the_batch_is_refused_word_for_word(changes: dict[str, Any],
                                                                         message: str) -> None:
    assert _refusal(**changes) == message


def test_the_paths_are_checked_before_the_limits() -> None:
    assert _refusal(output_key="x", max_ms_per_row=0).startswith("shard.output_key:")


def test_the_operators_limits_are_parsed_at_their_bounds_and_refused_past_them() -> None:
    assert parse_limits({"max_ms_per_row": 1, "max_memory_mib": 64}) == {"max_ms_per_row": 1, "max_memory_mib": 64}
    assert parse_limits({"max_ms_per_row": 3_600_000, "max_memory_mib": 1 << 20}) == {
        "max_ms_per_row": 3_600_000, "max_memory_mib": 1 << 20}
    assert parse_limits({"max_memory_mib": 128}) == {"max_ms_per_row": 1_000, "max_memory_mib": 128}
    for name, value, bounds in (("max_ms_per_row", 0, "1..3600000"), ("max_ms_per_row", 3_600_001, "1..3600000"),
                                ("max_memory_mib", 63, "64..1048576"), ("max_ms_per_row", 2.5, "1..3600000"),
                                ("max_memory_mib", "64", "64..1048576"), ("max_ms_per_row", None, "1..3600000")):
        with pytest.raises(FormatError) as refused:
            parse_limits({name: value})
        assert (refused.value.field, refused.value.expected, refused.value.actual) == (
            f"cscore_limits.{name}", f"an integer in {bounds}", value)
    with pytest.raises(FormatError) as refused:
        parse_limits({"max_ms_per_row": 5, "zeta": 1, "alpha": 2})
    assert (refused.value.field, refused.value.expected, refused.value.actual, refused.value.hint) == (
        "cscore_limits.alpha", "one of ['max_memory_mib', 'max_ms_per_row']", "alpha", "unknown field")
    with pytest.raises(FormatError) as refused:
        parse_limits(None)
    assert (refused.value.field, refused.value.expected, refused.value.actual) == (
        "cscore_limits", "a JSON object", "NoneType")


def test_the_input_binding_is_the_canonical_json_of_the_four_names() -> None:
    assert input_binding("acme", "b-1", "incoming/acme/b-1/x.parquet", "ef") == (
        '{"batch_id":"b-1","file_id":"ef","key":"incoming/acme/b-1/x.parquet","tenant":"acme"}')


def test_an_outcome_round_trips_and_defaults_its_timings_and_attestation() -> None:
    outcome = ShardOutcome(3, "o", "ab", "r", "cd", 10, "w", False, {"score": 0.5}, {"worker": "w"})
    assert ShardOutcome.from_dict(outcome.to_dict()) == outcome
    bare = {k: v for k, v in outcome.to_dict().items() if k not in ("seconds", "attestation")}
    assert ShardOutcome.from_dict({**bare, "extra": 1}) == ShardOutcome(3, "o", "ab", "r", "cd", 10, "w", False)
    assert ShardOutcome.from_dict(bare).to_dict() == {**bare, "seconds": {}, "attestation": {}}
