"""Hooks: the confidential worker pool and the key brokers, each reached through an Airflow connection.

Connections (the local stack creates them as `AIRFLOW_CONN_*` variables; an operator may define them in the
UI, a secrets backend or the environment instead):

- `cscore_workers` (type `cscore_workers`): extra `broker_url`, `result_backend` (the workers' Celery
  transport), `pool_size`;
- `cscore_broker_<name>` (type `cscore_key_broker`): host, the broker's `https://` URL; extra `ca_pem` (or
  `ca_file`) and `broker_name`;
- `aws_default` (type `aws`): the bucket's S3, through Airflow's Amazon provider.

The platform holds no key: a broker hook reads only what a broker publishes to anyone (health, public keys).
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx
from airflow.sdk import BaseHook
from celery import Celery

from dags.cscore_platform import worker_pool

WORKERS_CONN_ID = "cscore_workers"
BROKER_CONN_PREFIX = "cscore_broker_"


def broker_conn_id(broker_name: str) -> str:
    """`cscore_broker_<name>` for a broker's name in the workers' configuration ("owner" -> cscore_broker_owner)."""
    return BROKER_CONN_PREFIX + broker_name.replace("-", "_").lower()


class ConnectionMissing(LookupError):
    """An Airflow connection the hook needs is not defined; the message names it and its fields."""


def _connection(hook: BaseHook, conn_id: str, fields: str) -> Any:
    """The Airflow connection `conn_id`; ConnectionMissing naming it, its `fields` and the variable that sets it."""
    try:
        return hook.get_connection(conn_id)
    except Exception as exc:  # the SDK raises its own not-found error type
        raise ConnectionMissing(f"Airflow connection {conn_id} is not defined: create it with {fields} "
                                f"(the local stack sets AIRFLOW_CONN_{conn_id.upper()})") from exc


class WorkerPoolHook(BaseHook):
    """The confidential workers' Celery transport (connection `cscore_workers`).

    `get_conn()` -> a Celery client that sends tasks by name only (no worker code is imported).
    Raises ConnectionMissing when the connection lacks `broker_url` or `result_backend`.
    """

    conn_name_attr = "workers_conn_id"
    default_conn_name = WORKERS_CONN_ID
    conn_type = "cscore_workers"
    hook_name = "cscore confidential worker pool"

    def __init__(self, workers_conn_id: str = WORKERS_CONN_ID) -> None:
        super().__init__()
        self.workers_conn_id = workers_conn_id
        self._app: Celery | None = None

    @staticmethod
    def settings_from(extra: dict[str, Any], conn_id: str) -> dict[str, Any]:
        """The connection's extra as the pool needs it: broker_url, result_backend (str), pool_size (int, 0 unknown)."""
        missing = [k for k in ("broker_url", "result_backend") if not extra.get(k)]
        if missing:
            raise ConnectionMissing(f"Airflow connection {conn_id}: expected extra fields broker_url and "
                                    f"result_backend (the workers' Celery transport), missing {', '.join(missing)}")
        return {"broker_url": str(extra["broker_url"]), "result_backend": str(extra["result_backend"]),
                "pool_size": int(extra.get("pool_size") or 0)}

    def settings(self) -> dict[str, Any]:
        conn = _connection(self, self.workers_conn_id, "extra broker_url and result_backend")
        return self.settings_from(conn.extra_dejson, self.workers_conn_id)

    def get_conn(self) -> Celery:
        if self._app is None:
            settings = self.settings()
            if settings["pool_size"]:  # the ping in worker_pool stops once that many workers answered
                os.environ.setdefault("CSCORE_WORKER_POOL_SIZE", str(settings["pool_size"]))
            self._app = worker_pool.celery_client(settings["broker_url"], settings["result_backend"])
        return self._app

    def live_workers(self) -> list[str]:
        """Celery node names of the workers answering a ping."""
        return worker_pool.live_workers(self.get_conn())

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's connection test: (True, how many workers answer a ping), or (False, why) when the connection
        is incomplete or the transport does not answer (worker_pool.TRANSPORT_ERRORS). Any other error is a bug
        and propagates with its traceback."""
        try:
            workers = self.live_workers()
        except ConnectionMissing as exc:
            return False, str(exc)
        except worker_pool.TRANSPORT_ERRORS as exc:
            return False, f"the workers' Celery transport does not answer: {type(exc).__name__}: {exc}"
        return bool(workers), f"{len(workers)} worker(s) answered: {', '.join(workers) or 'none'}"


class KeyBrokerHook(BaseHook):
    """One key broker's public face (connection `cscore_broker_<name>`): health and published keys.

    The workers reach brokers by their measured configuration, never through this hook; the platform uses
    it to fail a batch at once, with the broker named, when a broker it needs does not answer.
    """

    conn_name_attr = "broker_conn_id"
    default_conn_name = "cscore_broker_owner"
    conn_type = "cscore_key_broker"
    hook_name = "cscore key broker"

    def __init__(self, broker_conn_id: str = "cscore_broker_owner", timeout_s: float = 5.0) -> None:
        super().__init__()
        self.broker_conn_id = broker_conn_id
        self.timeout_s = timeout_s

    @classmethod
    def for_broker(cls, broker_name: str, timeout_s: float = 5.0) -> KeyBrokerHook:
        return cls(broker_conn_id(broker_name), timeout_s)

    def describe(self) -> dict[str, Any]:
        """{"url", "name", "verify"}: the broker's base URL, its expected name and the TLS check to apply."""
        conn = _connection(self, self.broker_conn_id, "host https://<broker> and extra ca_pem")
        extra = conn.extra_dejson
        host = str(conn.host or "")
        if not host:
            raise ConnectionMissing(f"Airflow connection {self.broker_conn_id}: expected host (the broker's URL), "
                                    "got none")
        url = host if "://" in host else f"{conn.schema or 'https'}://{host}" + (f":{conn.port}" if conn.port else "")
        return {"url": url.rstrip("/"), "name": extra.get("broker_name"), "verify": _verify(extra)}

    def get_conn(self) -> httpx.Client:
        d = self.describe()
        return httpx.Client(base_url=d["url"], verify=d["verify"], timeout=self.timeout_s)

    def check(self) -> str:
        """GET /healthz; returns the broker's URL. Raises BrokerUnavailable naming the broker and the cause."""
        d = self.describe()
        try:
            with httpx.Client(base_url=d["url"], verify=d["verify"], timeout=self.timeout_s) as client:
                response = client.get("/healthz")
                response.raise_for_status()
                body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BrokerUnavailable(f"the key broker at {d['url']} (connection {self.broker_conn_id}) does not "
                                    f"answer /healthz: {type(exc).__name__}: {exc}") from exc
        if d["name"] and body.get("name") != d["name"]:
            raise BrokerUnavailable(f"the key broker at {d['url']} (connection {self.broker_conn_id}): expected "
                                    f"name {d['name']!r}, got {body.get('name')!r}; fix the connection's host")
        return str(d["url"])

    def public_keys(self) -> dict[str, dict[str, Any]]:
        """The broker's published JWKs: {"token": ..., "grant": ..., "transport": ...} (public halves only)."""
        with self.get_conn() as client:
            return {name: client.get(f"/kbs/v0/{path}").raise_for_status().json()
                    for name, path in (("token", "token-key"), ("grant", "grant-key"), ("transport", "broker-key"))}

    def test_connection(self) -> tuple[bool, str]:
        try:
            return True, f"broker answered at {self.check()}"
        except (BrokerUnavailable, ConnectionMissing) as exc:
            return False, str(exc)


class BrokerUnavailable(RuntimeError):
    """A key broker did not answer its health check, or answered with another name."""


def _verify(extra: dict[str, Any]) -> ssl.SSLContext | bool:
    """The TLS check for a broker: its own CA from the connection (ca_pem or ca_file), else the system's."""
    if extra.get("ca_pem"):
        return ssl.create_default_context(cadata=str(extra["ca_pem"]))
    if extra.get("ca_file"):
        return ssl.create_default_context(cafile=str(extra["ca_file"]))
    return True
