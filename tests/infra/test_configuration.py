"""Every part is switched by configuration: what the user set wins over the local stack's defaults.

Fast: these build the variables and config files the stack would start its parts with, and start nothing.
The same configuration running a real batch on PostgreSQL, Redis and RabbitMQ is tests/e2e/test_real_servers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.local import parts
from infra.local.stack import LocalStack
from infra.local.util import StackError

PG = "postgresql+psycopg://airflow:pw@pg.internal:5432/airflow"


def _stack(tmp_path: Path, environ: dict[str, str]) -> LocalStack:
    return LocalStack(tmp_path, environ=environ, out=lambda _: None)


def test_embedded_default_is_sqlite_and_local_executor(tmp_path: Path, clean_environ: dict[str, str]) -> None:
    env = parts.airflow_env(_stack(tmp_path, clean_environ))
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path.resolve() / 'airflow' / 'airflow.db'}"
    # LocalExecutor less its resume-after-defer race (tests/platform/test_defer_race.py)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "dags.cscore_platform.executor.DeferSafeLocalExecutor"
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC" not in env  # Airflow derives aiosqlite itself


def test_user_set_airflow_variables_win(tmp_path: Path, clean_environ: dict[str, str]) -> None:
    given = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": PG, "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
             "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:6379/5", "AIRFLOW__CORE__PARALLELISM": "32",
             "AIRFLOW__API__PORT": "8123"}
    stack = _stack(tmp_path, {**clean_environ, **given})
    env = parts.airflow_env(stack)
    assert {k: env[k] for k in given} == given
    # The psycopg async twin, not Airflow's derived asyncpg (not installed).
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == \
        "postgresql+psycopg_async://airflow:pw@pg.internal:5432/airflow"
    assert stack.env["CSCORE_AIRFLOW_URL"] == env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8123"
    assert parts.uses_celery_executor(env)
    # Every process the stack starts sees the user's values (child_env merges airflow_env last).
    stack.airflow_env = env
    assert stack.child_env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == PG


def test_a_user_set_async_url_is_kept(tmp_path: Path, clean_environ: dict[str, str]) -> None:
    mine = "postgresql+psycopg_async://other@pg:5432/airflow"
    env = parts.airflow_env(_stack(tmp_path, {**clean_environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": PG,
                                              "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": mine}))
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == mine


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2"])
def test_a_postgres_url_without_its_driver_is_refused_with_the_one_to_use(
        tmp_path: Path, clean_environ: dict[str, str], scheme: str) -> None:
    environ = {**clean_environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{scheme}://airflow:secret@pg/airflow"}
    with pytest.raises(StackError, match=r"needs psycopg2.*postgresql\+psycopg://airflow:\*\*\*@pg/airflow") as info:
        parts.airflow_env(_stack(tmp_path, environ))
    assert "secret" not in str(info.value)


def test_celery_executor_without_its_broker_is_refused(tmp_path: Path, clean_environ: dict[str, str]) -> None:
    environ = {**clean_environ, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,CeleryExecutor"}
    with pytest.raises(StackError, match="AIRFLOW__CELERY__BROKER_URL is unset"):
        parts.airflow_env(_stack(tmp_path, environ))


def test_celery_executor_is_recognised_by_name_or_path() -> None:
    assert parts.uses_celery_executor({"AIRFLOW__CORE__EXECUTOR":
                                       "airflow.providers.celery.executors.celery_executor.CeleryExecutor"})
    assert not parts.uses_celery_executor({"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"})
    assert not parts.uses_celery_executor({"AIRFLOW__CORE__EXECUTOR": "CeleryKubernetesExecutorX"})


def test_celery_provider_is_installed() -> None:
    from airflow.providers.celery.executors.celery_executor import CeleryExecutor

    assert CeleryExecutor.__name__ == "CeleryExecutor"


def test_broker_store_is_postgres_by_configuration(tmp_path: Path, clean_environ: dict[str, str]) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/cscore?options=-csearch_path%3Downer"
    stack = _stack(tmp_path, {**clean_environ, "CSCORE_OWNER_BROKER_DB_URL": url})
    owner, provider = parts.broker_config(stack, "owner", 1), parts.broker_config(stack, "provider", 2)
    assert owner["db_url"] == url and "db_path" not in owner
    assert provider["db_path"] == str(tmp_path.resolve() / "brokers" / "provider" / "keys.sqlite")
    assert "db_url" not in provider


def test_the_dags_connections_come_from_the_stacks_parts_and_resolve_in_airflow(
        tmp_path: Path, clean_environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from joserfc.jwk import OKPKey

    from dags.cscore_platform.provider import KeyBrokerHook, WorkerPoolHook, broker_conn_id
    from keybroker.tls import ensure_local_tls
    from wire.worker_config import CONFIG_ENV, BrokerIdentity, WorkerConfig

    ca_pem = ensure_local_tls(tmp_path / "tls", tmp_path / "kb", "acme-kb").ca_cert.read_text()  # a real CA
    config = WorkerConfig("simulated-sev-snp", (BrokerIdentity("acme-kb", "https://kb.acme:8443", ca_pem),),
                          (BrokerIdentity("provider", "https://kb.provider:8443", ca_pem,
                                          (OKPKey.generate_key("Ed25519").as_dict(private=False),)),))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_json()))
    stack = _stack(tmp_path, clean_environ)
    stack.env.update({CONFIG_ENV: str(path), "CSCORE_CELERY_BROKER_URL": "redis://r:6379/0",
                      "CSCORE_CELERY_RESULT_BACKEND": "redis://r:6379/1", "CSCORE_WORKER_POOL_SIZE": "3"})
    conns = parts.platform_connections(stack)
    assert set(conns) == {"AIRFLOW_CONN_CSCORE_WORKERS", "AIRFLOW_CONN_CSCORE_BROKER_ACME_KB",
                          "AIRFLOW_CONN_CSCORE_BROKER_PROVIDER"}
    assert f"AIRFLOW_CONN_{broker_conn_id('acme-kb').upper()}" in conns  # the stack names them as the hook does
    for name, value in conns.items():
        monkeypatch.setenv(name, value)
    # Airflow's own connection lookup (environment backend) gives the hooks what the parts are.
    assert WorkerPoolHook().settings() == {"broker_url": "redis://r:6379/0", "result_backend": "redis://r:6379/1",
                                           "pool_size": 3}
    described = KeyBrokerHook.for_broker("acme-kb").describe()
    assert (described["url"], described["name"]) == ("https://kb.acme:8443", "acme-kb")
    assert described["verify"].get_ca_certs()  # that broker's own CA, not the system's


def test_a_missing_or_incomplete_connection_is_named_with_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from dags.cscore_platform.provider import ConnectionMissing, KeyBrokerHook, WorkerPoolHook

    monkeypatch.delenv("AIRFLOW_CONN_CSCORE_BROKER_NOBODY", raising=False)
    with pytest.raises(ConnectionMissing,
                       match="cscore_broker_nobody is not defined.*AIRFLOW_CONN_CSCORE_BROKER_NOBODY"):
        KeyBrokerHook.for_broker("nobody").describe()
    monkeypatch.setenv("AIRFLOW_CONN_CSCORE_WORKERS", '{"conn_type": "cscore_workers", "extra": {"broker_url": "x"}}')
    with pytest.raises(ConnectionMissing, match="cscore_workers: expected extra fields.*missing result_backend"):
        WorkerPoolHook().settings()


def test_the_worker_pools_connection_test_reports_a_transport_down_and_lets_a_bug_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import socket

    from dags.cscore_platform import worker_pool
    from dags.cscore_platform.provider import WorkerPoolHook

    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extra = {"broker_url": f"redis://127.0.0.1:{port}/0", "result_backend": f"redis://127.0.0.1:{port}/1"}
    monkeypatch.setenv("AIRFLOW_CONN_CSCORE_WORKERS", json.dumps({"conn_type": "cscore_workers", "extra": extra}))
    monkeypatch.delenv("CSCORE_WORKER_POOL_SIZE", raising=False)
    ok, message = WorkerPoolHook().test_connection()
    assert not ok and message.startswith("the workers' Celery transport does not answer") and f":{port}" in message
    monkeypatch.setenv("AIRFLOW_CONN_CSCORE_WORKERS", json.dumps({"conn_type": "cscore_workers",
                                                                  "extra": {"broker_url": extra["broker_url"]}}))
    assert WorkerPoolHook().test_connection() == (False, "Airflow connection cscore_workers: expected extra fields "
                                                  "broker_url and result_backend (the workers' Celery transport), "
                                                  "missing result_backend")

    def broken(app: object, timeout: float = 3.0) -> list[str]:
        raise TypeError("a bug in the ping")

    monkeypatch.setattr(worker_pool, "live_workers", broken)
    monkeypatch.setenv("AIRFLOW_CONN_CSCORE_WORKERS", json.dumps({"conn_type": "cscore_workers", "extra": extra}))
    with pytest.raises(TypeError, match="a bug in the ping"):  # not reported to the UI as the transport's fault
        WorkerPoolHook().test_connection()
