"""Faults met by the owner and the worker: a batch or tenant that does not exist, a key broker that is down,
S3 errors beyond boto3's retries, leftover shards of a failed batch.

One moto S3 (a real server over HTTP) for the module; the CLI runs as a subprocess with its own environment.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dags.cscore_platform.steps import _whose_broker
from enclave.kbs_client import AttestedSession, BrokerUnreachable, KbsError
from infra.local import aws
from infra.local.stack import LocalStack
from infra.local.util import free_port
from sdk.party import Party
from wire.shard import ShardSpec

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    with LocalStack(tmp_path_factory.mktemp("faults-s3"), workers=0, airflow=False, brokers=False, sim_tee=False,
                    environ=environ, out=lambda _: None) as stack:
        yield stack


def _cscore(stack: LocalStack, *args: str, home: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "CSCORE_S3_ENDPOINT": stack.env["CSCORE_S3_ENDPOINT"], "CSCORE_BUCKET": stack.env["CSCORE_BUCKET"],
           "CSCORE_STATE_DIR": str(home / "state"), "CSCORE_OWNER_BROKER_URL": "https://127.0.0.1:9"}
    # A timeout here would mean it waited for a batch that will never come: the test fails.
    return subprocess.run([sys.executable, "-m", "cscore", "--state-dir", str(home / "state"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("batch, tenant", [("b-does-not-exist", "acme"), ("b-of-acme", "globex")],
                         ids=["unknown-batch", "other-tenant"])
def test_results_for_a_batch_that_does_not_exist_fail_at_once(s3_stack: LocalStack, tmp_path: Path, batch: str,
                                                              tenant: str) -> None:
    s3, _ = aws.clients(s3_stack.env["CSCORE_S3_ENDPOINT"])
    s3.put_object(Bucket="cscore", Key="incoming/acme/b-of-acme/manifest.jws", Body=b"signed manifest")
    result = _cscore(s3_stack, "owner", "results", batch, "--tenant", tenant, "--wait", "900", home=tmp_path)
    assert result.returncode != 0
    assert f"batch '{batch}': no such batch for tenant '{tenant}'" in result.stderr, result.stderr
    assert f"incoming/{tenant}/{batch}/manifest.jws is absent" in result.stderr
    assert "Traceback" not in result.stderr
    assert "still" not in result.stderr + result.stdout


class _NoEvidence:
    def get_evidence(self, report_data: bytes) -> object:
        raise AssertionError("no evidence is asked for before the broker answered")


def test_a_broker_that_is_down_is_named_for_the_worker() -> None:
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    session = AttestedSession(url, _NoEvidence(), party="owner", timeout_s=5)
    with pytest.raises(BrokerUnreachable) as caught:
        session.attest()
    message = str(caught.value)
    assert message.startswith(f"the owner's key broker at {url} did not answer (ConnectError")
    assert "check that it runs and that this worker can reach it, then resubmit the batch" in message
    assert isinstance(caught.value, KbsError)  # a shareable error: the platform sees this text
    assert caught.value.__context__ is None


def test_a_broker_that_is_down_is_named_for_the_owner(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "broker-admin-token").write_text("t" * 32)
    admin = Party(home=tmp_path / "owner", broker_url=url).broker()
    with pytest.raises(BrokerUnreachable, match=rf"^the owner's key broker at {url} did not answer \(ConnectError.*"
                                                r"check that it runs and that this machine can reach it, then run "
                                                r"the command again$"):
        admin.create_key("acme.b1.footer")


def test_the_platform_says_whose_broker_a_worker_could_not_reach() -> None:
    owner, provider = "https://kbs.owner.example:8443", "https://kbs.provider.example/"
    refusal = ("worker w1 failed attestation: BrokerUnreachable: the key broker at https://kbs.provider.example "
               "did not answer (ConnectError: refused); check that it runs")
    assert _whose_broker(refusal, owner, provider) == refusal.replace(
        "the key broker at https://kbs.provider.example ", f"the provider's key broker at {provider} ")


# -- the worker's side of S3 faults and of cancelled batches -----------------------------------------------

@pytest.fixture
def worker_tasks(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The Celery app needs a transport URL to import; nothing connects in these tests.
    monkeypatch.setenv("CSCORE_CELERY_BROKER_URL", "memory://")
    monkeypatch.setenv("CSCORE_CELERY_RESULT_BACKEND", "cache+memory://")
    for name in ("tasks.worker_tasks", "tasks.celery_app"):
        sys.modules.pop(name, None)
    module = importlib.import_module("tasks.worker_tasks")
    module.storage.new_s3_client.cache_clear()
    yield module
    module.storage.new_s3_client.cache_clear()


class _SlowDown(BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request as S3 does when it sheds load."""

    def _answer(self) -> None:
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


def test_s3_errors_beyond_boto3_retries_name_operation_and_code_and_are_retried(
        worker_tasks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowDown)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CSCORE_S3_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # boto3's own retries, kept short here
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    try:
        key = "incoming/acme/b-1/part-00000.parquet"
        with pytest.raises(worker_tasks.storage.StorageError) as caught:
            worker_tasks.storage.get_bytes(key)
        assert str(caught.value) == f"S3 GetObject of {key}: SlowDown (HTTP 503) after boto3's retries"
        assert caught.value.transient and caught.value.__context__ is None
        with pytest.raises(worker_tasks.storage.StorageError, match=r"^S3 PutObject \(If-None-Match\) of r: SlowDown"):
            worker_tasks.storage.put_if_absent("r", b"receipt")

        @worker_tasks.contained
        def shard() -> None:
            worker_tasks.storage.get_bytes(key)

        with pytest.raises(worker_tasks.WorkerRetry, match=f"^StorageError: S3 GetObject of {key}: SlowDown"):
            shard()  # what Celery sees: retried with backoff, and this text is the final failure
        task = worker_tasks.score_shard
        assert task.autoretry_for == (worker_tasks.WorkerRetry,)
        assert (task.max_retries, task.retry_backoff, task.retry_backoff_max) == (5, 2, 30)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, runs", [
    ({"state": "failed", "run_id": "run-1", "reason": "score: shard 2 failed"}, False),
    ({"state": "processing", "run_id": "run-2"}, False),  # resubmitted: another run holds it now
    ({"state": "processing", "run_id": "run-1"}, True),
], ids=["batch-failed", "taken-over", "still-its-run"])
def test_a_leftover_shard_of_a_failed_batch_is_not_run(s3_stack: LocalStack, worker_tasks: Any,
                                                      monkeypatch: pytest.MonkeyPatch, status: dict[str, str],
                                                      runs: bool) -> None:
    for var in ("CSCORE_S3_ENDPOINT", "CSCORE_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(var, s3_stack.env[var])
    s3, _ = aws.clients(s3_stack.env["CSCORE_S3_ENDPOINT"])
    s3.put_object(Bucket="cscore", Key="status/acme/b-1.json", Body=json.dumps(status).encode())
    spec = ShardSpec.from_dict(_spec())
    if runs:
        worker_tasks._refuse_leftover(spec, "run-1")
    else:
        expected = f"shard 3 of batch b-1: sent by run run-1, but the batch is '{status['state']}' in run "
        with pytest.raises(worker_tasks.LeftoverShard, match=expected + f"'{status['run_id']}'"):
            worker_tasks._refuse_leftover(spec, "run-1")


def _spec() -> dict[str, Any]:
    return {"tenant": "acme", "batch_id": "b-1", "shard_index": 3, "input_key": "incoming/acme/b-1/part-00000.parquet",
            "input_sha256": "ab" * 32, "row_group_start": 2, "row_group_end": 4, "model_name": "spam-filter",
            "model_version": 1, "model_digest": "sha256:" + "cd" * 32, "owner_broker": "owner",
            "footer_key": "acme.b-1.footer", "column_key": "acme.b-1.emails", "result_key": "acme.b-1.results",
            "output_key": "results/acme/b-1/shard-00003.parquet",
            "receipt_key": "results/acme/b-1/shard-00003.receipt.jws"}


def test_the_worker_reads_a_shard_from_s3_by_ranges(s3_stack: LocalStack, worker_tasks: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a real S3 API (moto over HTTP): the tail gives the size, ranges give the footer and column chunks."""
    from enclave.pme import PmeKeys
    from enclave.worker import read_shard
    from tests.enclave.test_pme import LocalWrapper
    from tests.enclave.test_ranged_input import _part
    from tests.enclave.test_ranged_input import _spec as ranged_spec

    for var in ("CSCORE_S3_ENDPOINT", "CSCORE_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(var, s3_stack.env[var])
    wrapper = LocalWrapper()
    data, file_id, key = _part(wrapper, "b-1", 0, 60_000)  # ~3 MB: three times the tail request
    s3, _ = aws.clients(s3_stack.env["CSCORE_S3_ENDPOINT"])
    s3.put_object(Bucket="cscore", Key=key, Body=data)
    source = worker_tasks.storage.S3Object(key)
    with PmeKeys(wrapper) as keys:
        table = read_shard(ranged_spec("b-1", key, file_id, 298, 300), source, keys)
    assert table.column("message_id").to_pylist()[-1] == "b-1.0-59999"
    assert source.requests <= 3 and source.bytes_read < len(data) / 2, (source.requests, source.bytes_read, len(data))
    assert worker_tasks.storage.S3Object(key).tail(len(data) * 2) == (data, len(data))  # a suffix beyond the start


def test_a_shards_first_reads_at_once_build_one_s3_client(worker_tasks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard's first reads start on several threads together: they must share one client, not build one each."""
    built: list[int] = []

    def slow_client(*_: Any, **__: Any) -> object:
        built.append(threading.get_ident())
        threading.Event().wait(0.2)  # longer than the threads take to start: without the lock, each builds one
        return object()

    monkeypatch.setattr(worker_tasks.storage.boto3, "client", slow_client)
    clients: list[object] = []
    threads = [threading.Thread(target=lambda: clients.append(worker_tasks.storage.s3_client())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1
    assert len(clients) == 3 and clients[0] is clients[1] is clients[2]
