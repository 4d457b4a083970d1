"""keybroker/config.py in process: the broker's JSON configuration read strictly, each refusal word for word; the
store target (a URL file's content never shown); the TLS rules; the KEK and tokens created private and checked."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from keybroker.config import BrokerConfig, _write_secret, check_chip_ids, check_min_tcb, check_simulated

CHIP = "0A" * 64


def _base(tmp_path: Path) -> dict[str, Any]:
    return {"name": "o", "host": "127.0.0.1", "port": 8080, "kek_path": str(tmp_path / "kek"),
            "admin_token_path": str(tmp_path / "admin"), "db_path": str(tmp_path / "keys.sqlite")}


def _refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as refused:
        BrokerConfig.from_dict(raw)
    return str(refused.value)


# from_dict -------------------------------------------------------------------------------------------------------
def test_a_config_is_read_with_its_paths_port_and_defaults(tmp_path: Path) -> None:
    paths = {key: str(tmp_path / key) for key in ("db_url_path", "trusted_roots_dir", "tls_cert_path",
                                                  "tls_key_path", "metrics_token_path")}
    config = BrokerConfig.from_dict({**_base(tmp_path), "port": "8443", **paths, "log_format": "JSON",
                                     "unknown": [1], "extra": "kept as given"})
    assert (config.name, config.host, config.port, config.log_format) == ("o", "127.0.0.1", 8443, "json")
    assert config.kek_path == tmp_path / "kek" and config.admin_token_path == tmp_path / "admin"
    assert config.db_path == tmp_path / "keys.sqlite"
    for key, value in paths.items():
        assert getattr(config, key) == Path(value), key
    assert config.extra == {"unknown": [1], "extra": "kept as given"}
    plain = BrokerConfig.from_dict(_base(tmp_path))
    assert (plain.log_format, plain.min_tcb, plain.chip_ids, plain.db_url, plain.tls_cert_path) == (
        "text", {}, [], None, None)
    assert (plain.accept_simulated, plain.simulated_key_ids, plain.extra) == (False, [], {})


def test_a_config_without_its_required_keys_is_refused_naming_each(tmp_path: Path) -> None:
    assert _refused({}) == ("broker config is missing required keys: name, host, port, kek_path, admin_token_path, "
                            "db_path (or db_url, or db_url_path)")
    base = _base(tmp_path)
    for key in ("name", "host", "port", "kek_path", "admin_token_path"):
        assert _refused({k: v for k, v in base.items() if k != key}) == (
            f"broker config is missing required keys: {key}"), key
    assert _refused({**base, "db_path": None, "db_url": None, "db_url_path": None}) == (
        "broker config is missing required keys: db_path (or db_url, or db_url_path)")
    for key, value in (("db_url", "postgresql://u@h/db"), ("db_url_path", str(tmp_path / "url"))):
        assert getattr(BrokerConfig.from_dict({**base, "db_path": None, key: value}), key) is not None, key


def test_a_db_url_beside_a_db_url_path_or_of_another_database_is_refused(tmp_path: Path) -> None:
    base = _base(tmp_path)
    assert _refused({**base, "db_url": "postgresql://u@h/db", "db_url_path": str(tmp_path / "url")}) == (
        "broker config: db_url and db_url_path both set; keep db_url_path (the URL in a secret file) and remove "
        "db_url")
    assert _refused({**base, "db_url": "mysql://u:pw@h/db"}) == (
        "broker config: db_url must be a postgresql:// URL, got 'mysql://u:***@h/db'")
    config = BrokerConfig.from_dict({**base, "db_url": None, "db_url_path": str(tmp_path / "url")})
    assert (config.db_url, config.db_url_path) == (None, tmp_path / "url")
    assert BrokerConfig.from_dict({**base, "db_url": "postgresql://u@h/db", "db_url_path": None}).db_url_path is None


def test_a_config_checks_its_tcb_floor_chip_ids_and_log_format(tmp_path: Path) -> None:
    config = BrokerConfig.from_dict({**_base(tmp_path), "min_tcb": {"snp": 3}, "chip_ids": [CHIP]})
    assert (config.min_tcb, config.chip_ids) == ({"snp": 3}, [CHIP.lower()])
    assert _refused({**_base(tmp_path), "min_tcb": {"snp": 256}}) == (
        "min_tcb: expected integers 0..255, got {'snp': 256}")
    assert _refused({**_base(tmp_path), "chip_ids": ["ab"]}) == (
        "chip_ids: expected a list of 64-byte hex chip ids, got ['ab']")
    assert _refused({**_base(tmp_path), "log_format": "yaml"}) == (
        "broker config: log_format: expected one of ['text', 'json'], got 'yaml'")


# The simulated root ---------------------------------------------------------------------------------------------
def test_the_simulated_root_is_accepted_only_for_keys_named_by_pattern(tmp_path: Path) -> None:
    config = BrokerConfig.from_dict({**_base(tmp_path), "accept_simulated": True, "simulated_key_ids": ["dev.*"]})
    assert config.simulated_allowed("dev.data") and not config.simulated_allowed("prod.data")
    assert not config.simulated_allowed("DEV.data")  # fnmatch, case-sensitive
    assert not BrokerConfig.from_dict(_base(tmp_path)).simulated_allowed("dev.data")
    assert _refused({**_base(tmp_path), "accept_simulated": True}) == (
        "broker config: accept_simulated is true but simulated_key_ids is empty; name the keys (fnmatch patterns) "
        "that may be released to simulated evidence, or set accept_simulated false (production)")
    assert _refused({**_base(tmp_path), "simulated_key_ids": ["dev.*"]}) == (
        "broker config: simulated_key_ids is set but accept_simulated is not true")


@pytest.mark.parametrize("accept", [False, "true", 1, None])
def test_simulated_key_ids_need_accept_simulated_exactly_true(accept: Any) -> None:
    with pytest.raises(ValueError, match="^broker config: simulated_key_ids is set but accept_simulated is not true$"):
        check_simulated(accept, ["dev.*"])
    check_simulated(accept, [])  # nothing named, nothing accepted


@pytest.mark.parametrize("patterns", ["dev.*", ["dev.*", ""], ["dev.*", 3], None])
def test_simulated_key_ids_are_a_list_of_non_empty_patterns(patterns: Any) -> None:
    with pytest.raises(ValueError) as refused:
        check_simulated(True, patterns)
    assert str(refused.value) == f"simulated_key_ids: expected a list of key-id patterns, got {patterns!r}"


# Floors ------------------------------------------------------------------------------------------------------------
def test_a_tcb_floor_is_a_table_of_components_0_to_255() -> None:
    floor = {"bootloader": 0, "tee": 255, "snp": 3, "microcode": 1, "fmc": 2}
    assert check_min_tcb(floor, "where") == floor and check_min_tcb(floor, "where") is not floor
    assert check_min_tcb({}, "where") == {}
    components = "['bootloader', 'tee', 'snp', 'microcode', 'fmc']"
    not_a_floor: list[Any] = [[("snp", 1)], {"snp": 1, "pcr": 0}]
    for value in not_a_floor:
        with pytest.raises(ValueError) as refused:
            check_min_tcb(value, "where")
        assert str(refused.value) == f"where: expected a table with keys from {components}, got {value!r}"
    out_of_range: list[dict[str, Any]] = [{"snp": 256}, {"snp": -1}, {"snp": True}, {"snp": "3"},
                                          {"tee": 1, "snp": 1.0}]
    for value in out_of_range:
        with pytest.raises(ValueError) as refused:
            check_min_tcb(value, "where")
        assert str(refused.value) == f"where: expected integers 0..255, got {value!r}"


def test_chip_ids_are_a_list_of_64_byte_hex_strings_kept_lower_case() -> None:
    assert check_chip_ids([CHIP, "ff" * 64], "where") == [CHIP.lower(), "ff" * 64]
    assert check_chip_ids([], "where") == []
    for value in (CHIP, [CHIP, CHIP[:-1]], [CHIP + "0"], ["zz" * 64], [CHIP, 7]):
        with pytest.raises(ValueError) as refused:
            check_chip_ids(value, "where")
        assert str(refused.value) == f"where: expected a list of 64-byte hex chip ids, got {str(value)[:200]}"
    long = ["x" * 300]
    with pytest.raises(ValueError) as refused:
        check_chip_ids(long, "where")
    assert str(refused.value) == "where: expected a list of 64-byte hex chip ids, got ['" + "x" * 198


# The store target -------------------------------------------------------------------------------------------------
def test_the_store_target_is_the_url_file_then_the_url_then_the_sqlite_file(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("  postgresql://u:pw@h/db\n")
    base = _base(tmp_path)
    assert BrokerConfig.from_dict(base).store_target == tmp_path / "keys.sqlite"
    assert BrokerConfig.from_dict({**base, "db_url": "postgres://h/db"}).store_target == "postgres://h/db"
    assert BrokerConfig.from_dict({**base, "db_url_path": str(secret)}).store_target == "postgresql://u:pw@h/db"


def test_a_url_file_that_cannot_be_read_or_holds_no_postgres_url_is_refused_without_its_content(
        tmp_path: Path) -> None:
    secret = tmp_path / "url"
    config = BrokerConfig.from_dict({**_base(tmp_path), "db_url_path": str(secret)})
    hint = "; mount the Secret holding the key store's URL there"
    cases: list[tuple[bytes | None, str]] = [
        (None, f"cannot be read (FileNotFoundError: No such file or directory){hint}"),
        (b"\xffpostgresql://u:pw@h/db", f"cannot be read (UnicodeDecodeError: not UTF-8 text){hint}"),
        (b"mysql://u:hunter2@h/db", "expected one postgresql:// URL in the file, got a mysql:// URL"),
        (b"averyveryverylongscheme1://u:hunter2@h/db",
         "expected one postgresql:// URL in the file, got a averyveryverylongsch:// URL"),
        (b"my-sql://u:hunter2@h/db", "expected one postgresql:// URL in the file, got 23 characters of another kind"),
        (b"mysql://u:hunter2@h/db?next=http://x", "expected one postgresql:// URL in the file, got a mysql:// URL"),
        (b"hunter2", "expected one postgresql:// URL in the file, got 7 characters of another kind"),
    ]
    for content, expected in cases:
        secret.unlink(missing_ok=True)
        if content is not None:
            secret.write_bytes(content)
        with pytest.raises(ValueError) as refused:
            config.store_target  # noqa: B018
        assert str(refused.value) == f"broker config: db_url_path {secret}: {expected}"
        assert "hunter2" not in str(refused.value) and "pw@" not in str(refused.value)


# Transport ---------------------------------------------------------------------------------------------------------
def test_tls_needs_both_files_and_plain_http_a_loopback_host(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    plain = BrokerConfig.from_dict(_base(tmp_path))
    assert (plain.tls, plain.scheme) == (False, "http")
    plain.check_transport()
    for host in ("::1", "localhost"):
        BrokerConfig.from_dict({**_base(tmp_path), "host": host}).check_transport()
    with pytest.raises(ValueError) as refused:
        BrokerConfig.from_dict({**_base(tmp_path), "host": "0.0.0.0"}).check_transport()
    assert str(refused.value) == ("broker config: refusing plain HTTP on host '0.0.0.0'; set tls_cert_path and "
                                  "tls_key_path, or bind a loopback address (127.0.0.1, ::1, localhost)")
    for half in ({"tls_cert_path": str(cert)}, {"tls_key_path": str(key)}):
        with pytest.raises(ValueError) as refused:
            BrokerConfig.from_dict({**_base(tmp_path), **half}).check_transport()
        assert str(refused.value) == "broker config: tls_cert_path and tls_key_path go together (both or neither)"
    tls = BrokerConfig.from_dict({**_base(tmp_path), "host": "0.0.0.0", "tls_cert_path": str(cert),
                                  "tls_key_path": str(key)})
    assert (tls.tls, tls.scheme) == (True, "https")
    for missing in (cert, key):
        (tmp_path / "cert.pem").write_text("c")
        (tmp_path / "key.pem").write_text("k")
        missing.unlink()
        with pytest.raises(ValueError) as refused:
            tls.check_transport()
        assert str(refused.value) == f"broker config: TLS file {missing} does not exist"
    key.write_text("k")
    tls.check_transport()


def test_a_config_file_is_read_as_json(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    path.write_text(json.dumps(_base(tmp_path)))
    assert BrokerConfig.from_file(str(path)) == BrokerConfig.from_dict(_base(tmp_path))


# Secrets -----------------------------------------------------------------------------------------------------------
def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_kek_is_created_once_private_and_must_be_32_bytes(tmp_path: Path) -> None:
    config = BrokerConfig.from_dict({**_base(tmp_path), "kek_path": str(tmp_path / "secrets" / "kek")})
    kek = config.load_kek()
    text = (tmp_path / "secrets" / "kek").read_text()
    assert len(kek) == 32 and text == kek.hex() + "\n" and _private(tmp_path / "secrets" / "kek")
    assert config.load_kek() == kek
    for size in (31, 33):
        (tmp_path / "secrets" / "kek").write_text(f" {'ab' * size}\n")
        with pytest.raises(ValueError) as refused:
            config.load_kek()
        assert str(refused.value) == f"{tmp_path / 'secrets' / 'kek'}: expected 32 bytes as hex, found {size} bytes"


def test_the_admin_token_is_created_once_private_and_at_least_16_characters(tmp_path: Path) -> None:
    config = BrokerConfig.from_dict(_base(tmp_path))
    token = config.load_admin_token()
    assert len(token) == 43 and (tmp_path / "admin").read_text() == token + "\n" and _private(tmp_path / "admin")
    assert config.load_admin_token() == token
    (tmp_path / "admin").write_text(" " + "a" * 16 + "\n")
    assert config.load_admin_token() == "a" * 16
    (tmp_path / "admin").write_text("a" * 15)
    with pytest.raises(ValueError) as refused:
        config.load_admin_token()
    assert str(refused.value) == f"{tmp_path / 'admin'}: admin token shorter than 16 characters"


def test_the_metrics_token_is_optional_created_once_private_and_at_least_16_characters(tmp_path: Path) -> None:
    assert BrokerConfig.from_dict(_base(tmp_path)).load_metrics_token() is None
    path = tmp_path / "metrics"
    config = BrokerConfig.from_dict({**_base(tmp_path), "metrics_token_path": str(path)})
    token = config.load_metrics_token()
    assert token is not None and len(token) == 43 and path.read_text() == token + "\n" and _private(path)
    assert config.load_metrics_token() == token
    path.write_text(" " + "m" * 16 + "\n")
    assert config.load_metrics_token() == "m" * 16
    path.write_text("m" * 15)
    with pytest.raises(ValueError) as refused:
        config.load_metrics_token()
    assert str(refused.value) == f"{path}: metrics token shorter than 16 characters"


def test_a_secret_file_written_meanwhile_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "secret"
    _write_secret(path, "first")
    _write_secret(path, "second")  # another broker process raced us to it: its file stays
    assert path.read_text() == "first\n" and _private(path)
