"""The audit reads the brokers' decision reasons: each shape the broker writes, old and new."""

from __future__ import annotations

from audit.collect import parse_grant_reason, parse_policy_reason

CONFIG = "cf" * 32


def test_grant_reasons_with_and_without_worker_configurations() -> None:
    new = parse_grant_reason(f"grant keys ['a.footer', 'a.results'] to measurements ['{'ab' * 48}']; "
                             f"worker configurations ['{CONFIG}']; 2418 rows")
    assert new == {"key_ids": ["a.footer", "a.results"], "granted_measurements": ["ab" * 48],
                   "granted_config_digests": [CONFIG], "granted_rows": 2418}
    old = parse_grant_reason("grant keys ['k'] to measurements ['cd']")  # logs written before the configuration
    assert old["key_ids"] == ["k"] and old["granted_measurements"] == ["cd"] and old["granted_config_digests"] is None
    assert parse_grant_reason("something else")["key_ids"] is None


def test_policy_reasons_with_a_quota() -> None:
    parsed = parse_policy_reason("created model key; policy: default; measurements: ['ab']; "
                                 "quota: {'rows': 100, 'period_s': 60}")
    assert parsed == {"key_kind": "model", "policy": None, "key_measurements": ["ab"]}
    assert parse_policy_reason("policy: !claims.debug; measurements: unchanged")["policy"] == "!claims.debug"
