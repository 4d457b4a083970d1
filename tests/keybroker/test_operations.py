"""Operators' view of a real broker process: /metrics (Prometheus), /healthz with the database, /readyz, JSON logs.

Every test runs `python -m keybroker serve` and talks to it over HTTP; the Postgres test drops the broker's
schema under it, as a failed database would.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from enclave.kbs_client import AttestedSession, KbsError
from enclave.tee import SimulatedSnpProvider
from keybroker.config import BrokerConfig
from tests.keybroker.conftest import MEASUREMENT, OTHER_MEASUREMENT, BrokerProcess
from tests.keybroker.test_store_postgres import ADMIN_URL, START_HINT

MODEL = "sha256:" + "22" * 32
CONFIG = bytes.fromhex("cf" * 32)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value (parsed by the client library)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, **labels: str) -> float:
    return parsed.get((metric, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def json_broker(tmp_path: Path, sim_dir: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path, name="owner", trusted_roots_dir=str(sim_dir), log_format="json",
                           metrics_token_path=str(tmp_path / "metrics-token"), shutdown_timeout_s=1).start()
    yield broker
    broker.stop()


def _session(broker: BrokerProcess, sim_dir: Path, measurement: bytes) -> AttestedSession:
    return AttestedSession(broker.url, SimulatedSnpProvider(sim_dir, measurement, host_data=CONFIG))


def test_metrics_count_requests_and_decisions_by_outcome_and_clause_without_ids_or_secrets(
        json_broker: BrokerProcess, sim_dir: Path) -> None:
    admin = json_broker.admin()
    admin.create_key("ops-data-7f3a")
    admin.grant("ops-batch-7f3a", MODEL, [MEASUREMENT.hex()], ["ops-data-7f3a"], config_digests=[CONFIG.hex()],
                rows=10)
    dek = secrets.token_bytes(32)
    wrapped = admin.wrap("ops-data-7f3a", dek)
    admin.get_key("ops-data-7f3a")
    granted = _session(json_broker, sim_dir, MEASUREMENT)
    assert granted.unwrap("ops-data-7f3a", wrapped, batch_id="ops-batch-7f3a", model_digest=MODEL) == dek
    with pytest.raises(KbsError) as refused:
        _session(json_broker, sim_dir, OTHER_MEASUREMENT).unwrap("ops-data-7f3a", wrapped, batch_id="ops-batch-7f3a",
                                                                 model_digest=MODEL)
    clause = str(refused.value).split("key 'ops-data-7f3a': ", 1)[1].split(":", 1)[0]  # the clause the 403 names

    with httpx.Client(base_url=json_broker.url, timeout=10) as http:
        assert http.get("/metrics").status_code == 401  # no scrape token
        wrong = http.get("/metrics", headers={"Authorization": f"Bearer {json_broker.admin_token}"})
        assert wrong.status_code == 401 and wrong.json()["type"].endswith("metrics-unauthorized")
        token = (json_broker.state / "metrics-token").read_text().strip()
        scrape = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    parsed = samples(scrape.text)

    decisions = "cscore_broker_decisions_total"
    assert value(parsed, decisions, operation="unwrap", outcome="allow", clause="default") == 1
    assert clause and clause not in ("default", "custom")
    assert value(parsed, decisions, operation="unwrap", outcome="deny", clause=clause) == 1
    assert value(parsed, decisions, operation="attest", outcome="allow", clause="evidence") == 2
    assert value(parsed, decisions, operation="admin.create_key", outcome="allow", clause="admin") == 1
    requests = "cscore_broker_requests_total"
    assert value(parsed, requests, route="/kbs/v0/unwrap", method="POST", status="200") == 1
    assert value(parsed, requests, route="/kbs/v0/unwrap", method="POST", status="403") == 1
    assert value(parsed, requests, route="/admin/v0/keys/{key_id}", method="GET", status="200") == 1
    assert value(parsed, requests, route="/metrics", method="GET", status="401") == 2
    assert value(parsed, "cscore_broker_request_duration_seconds_count", route="/kbs/v0/unwrap", method="POST") == 2
    assert value(parsed, "cscore_broker_info", name="owner", store="sqlite") == 1

    # Labels are names fixed in code: no key id, batch id, measurement; and no secret anywhere in the scrape.
    for secret in _secrets(json_broker, dek, token):
        assert secret not in scrape.text
    for needle in ("ops-data-7f3a", "ops-batch-7f3a", MEASUREMENT.hex(), OTHER_MEASUREMENT.hex()):
        assert needle not in scrape.text


def test_json_logs_are_one_object_per_line_with_structured_decisions_and_no_secret(
        json_broker: BrokerProcess, sim_dir: Path) -> None:
    admin = json_broker.admin()
    admin.create_key("canary-key")
    admin.grant("canary-batch", MODEL, [MEASUREMENT.hex()], ["canary-key"], config_digests=[CONFIG.hex()], rows=1)
    dek = secrets.token_bytes(32)
    wrapped = admin.wrap("canary-key", dek)
    session = _session(json_broker, sim_dir, MEASUREMENT)
    attested = session.attest()
    assert session.unwrap("canary-key", wrapped, batch_id="canary-batch", model_digest=MODEL) == dek
    assert admin.unwrap("canary-key", wrapped) == dek
    token = json_broker.admin_token
    httpx.get(f"{json_broker.url}/metrics", headers={"Authorization": "Bearer not-the-metrics-token"})
    json_broker.stop()  # flushes and ends the log

    lines = [line for line in json_broker.log_text().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line is one JSON object: a collector never sees text
    assert {"ts", "level", "logger", "service", "message"} <= set(docs[0])
    assert {d["service"] for d in docs} == {"owner-broker"}
    unwraps = [d for d in docs if d.get("operation") == "unwrap"]
    assert [(d["decision"], d["clause"], d["key_id"], d["batch_id"]) for d in unwraps] == [
        ("allow", "default", "canary-key", "canary-batch")]
    assert any(d["logger"] == "uvicorn.access" and "/kbs/v0/unwrap" in d["message"] for d in docs)
    text = "\n".join(lines)
    for secret in [*_secrets(json_broker, dek, token), attested.token]:
        assert secret not in text, "a secret reached the broker's log"


def _secrets(broker: BrokerProcess, dek: bytes, metrics_token: str) -> list[str]:
    """The broker's secrets and a released key, in every encoding a log line or a scrape could carry them."""
    kek = (broker.state / "kek.hex").read_text().strip()
    return [kek, broker.admin_token, metrics_token, dek.hex(), base64.b64encode(dek).decode(),
            base64.urlsafe_b64encode(dek).decode().rstrip("=")]


def test_readyz_needs_the_verifier_while_healthz_only_needs_the_database(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "ark.pem").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    broker = BrokerProcess(tmp_path, trusted_roots_dir=str(roots), shutdown_timeout_s=1).start()
    try:
        with httpx.Client(base_url=broker.url, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "ok", "name": "owner", "database": "sqlite"}
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["field"] == "verifier"
            assert "ark.pem" in ready.json()["detail"]
            assert http.get("/metrics").status_code == 200  # no metrics token configured: open, counts only
    finally:
        broker.stop()


@pytest.fixture
def pg_schema_url() -> Iterator[tuple[str, str]]:
    """A schema of its own in the server's default database (dropped at the end): (URL, schema)."""
    schema = f"ops_{secrets.token_hex(6)}"
    try:
        conn = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is unreachable: start it with `{START_HINT}` ({exc})", pytrace=False)
    with conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield f"{ADMIN_URL}?options={quote(f'-csearch_path={schema}')}", schema
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_healthz_and_readyz_fail_when_the_postgres_key_store_is_gone(pg_schema_url: tuple[str, str], tmp_path: Path,
                                                                     sim_dir: Path) -> None:
    url, schema = pg_schema_url
    broker = BrokerProcess(tmp_path, db_url=url, trusted_roots_dir=str(sim_dir), shutdown_timeout_s=1).start()
    try:
        with httpx.Client(base_url=broker.url, timeout=20) as http:
            assert http.get("/healthz").json()["database"] == "postgresql"
            assert http.get("/readyz").json() == {"status": "ready", "name": "owner", "database": "postgresql",
                                                  "verifier": "loaded"}
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            health, ready = http.get("/healthz"), http.get("/readyz")
            for answer in (health, ready):
                problem: dict[str, Any] = answer.json()
                assert answer.status_code == 503 and problem["type"].endswith("store-unavailable")
                assert problem["field"] == "database" and "postgresql key store does not answer" in problem["detail"]
            assert "postgres@" not in health.text  # the detail names the error, never the connection URL
            metrics = samples(http.get("/metrics").text)
            assert value(metrics, "cscore_broker_requests_total", route="/healthz", method="GET", status="503") == 1
    finally:
        broker.stop()


def test_log_format_is_checked_when_the_config_is_read(tmp_path: Path) -> None:
    base = {"name": "o", "host": "127.0.0.1", "port": 1, "kek_path": str(tmp_path / "k"),
            "admin_token_path": str(tmp_path / "a"), "db_path": str(tmp_path / "db")}
    assert BrokerConfig.from_dict(base).log_format == "text"
    assert BrokerConfig.from_dict({**base, "log_format": "JSON"}).log_format == "json"
    with pytest.raises(ValueError, match=r"log_format: expected one of \['text', 'json'\], got 'yaml'"):
        BrokerConfig.from_dict({**base, "log_format": "yaml"})
