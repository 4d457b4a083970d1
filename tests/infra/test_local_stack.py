"""The local stack's fast parts (moto S3+SQS, Redis): they work, and stopping leaves nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from infra.local import aws, procs
from infra.local.stack import LocalStack, StackError, load_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    s = LocalStack(tmp_path_factory.mktemp("stack"), workers=0, airflow=False, brokers=False,
                   sim_tee=False, environ=environ)
    with s:
        yield s


def test_env_file_has_the_contract_variables(stack: LocalStack) -> None:
    env = load_env(stack.env_file)
    assert env == stack.env
    assert env["CSCORE_STATE_DIR"] == str(stack.state_dir)
    assert env["CSCORE_S3_ENDPOINT"].startswith("http://127.0.0.1:")
    assert env["CSCORE_BUCKET"] == "cscore"
    assert env["CSCORE_SQS_QUEUE_URL"].endswith("/cscore-manifests")
    assert env["CSCORE_SQS_TRAINING_QUEUE_URL"].endswith("/cscore-training")
    assert env["CSCORE_CELERY_BROKER_URL"] == f"redis+socket://{stack.state_dir}/redis/redis.sock"
    assert env["CSCORE_CELERY_RESULT_BACKEND"] == env["CSCORE_CELERY_BROKER_URL"]
    assert env["CSCORE_TEE"] == "simulated-sev-snp"
    assert "CSCORE_TRUST_DIR" not in env  # tenants register through object storage, no shared folder
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_DEFAULT_REGION"]) == (
        "testing", "testing", "us-east-1")


def test_each_part_logs_and_has_a_pid_file(stack: LocalStack) -> None:
    for name, pid in stack.pids().items():
        assert (stack.state_dir / "pids" / f"{name}.pid").read_text().strip() == str(pid)
        assert (stack.state_dir / "logs" / f"{name}.log").exists()
        assert procs.alive(pid)
        assert os.getsid(pid) == pid  # each part leads its own session


def test_s3_put_get_over_http(stack: LocalStack) -> None:
    s3, _ = aws.clients(stack.env["CSCORE_S3_ENDPOINT"])
    s3.put_object(Bucket="cscore", Key="models/m/1/card.jws", Body=b"card")
    assert s3.get_object(Bucket="cscore", Key="models/m/1/card.jws")["Body"].read() == b"card"


def test_manifest_upload_notifies_the_queue_and_other_keys_do_not(stack: LocalStack) -> None:
    s3, sqs = aws.clients(stack.env["CSCORE_S3_ENDPOINT"])
    queue = stack.env["CSCORE_SQS_QUEUE_URL"]
    s3.put_object(Bucket="cscore", Key="incoming/acme/b 1/part-00000.parquet", Body=b"x")
    s3.put_object(Bucket="cscore", Key="results/acme/b1/manifest.jws", Body=b"x")  # wrong prefix
    assert aws.receive_keys(sqs, queue, wait_s=1.0) == []
    s3.put_object(Bucket="cscore", Key="incoming/acme/b 1/manifest.jws", Body=b"x")
    assert aws.receive_keys(sqs, queue, wait_s=5.0) == ["incoming/acme/b 1/manifest.jws"]


def test_training_manifests_go_to_their_own_queue(stack: LocalStack) -> None:
    """cscore_train's watcher deletes what it reads: a training manifest on the scoring queue would be lost."""
    s3, sqs = aws.clients(stack.env["CSCORE_S3_ENDPOINT"])
    scoring, training = stack.env["CSCORE_SQS_QUEUE_URL"], stack.env["CSCORE_SQS_TRAINING_QUEUE_URL"]
    s3.put_object(Bucket="cscore", Key="incoming/acme/t-1/training.jws", Body=b"x")
    assert aws.receive_keys(sqs, training, wait_s=5.0) == ["incoming/acme/t-1/training.jws"]
    s3.put_object(Bucket="cscore", Key="incoming/acme/b2/manifest.jws", Body=b"x")
    assert aws.receive_keys(sqs, training, wait_s=1.0) == []
    assert aws.receive_keys(sqs, scoring, wait_s=5.0) == ["incoming/acme/b2/manifest.jws"]


def test_redis_answers_on_the_unix_socket_only(stack: LocalStack) -> None:
    sock = stack.state_dir / "redis" / "redis.sock"
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        conn.sendall(b"PING\r\n")
        assert conn.recv(16) == b"+PONG\r\n"
    with Connection(stack.env["CSCORE_CELERY_BROKER_URL"]) as kombu_conn:
        kombu_conn.ensure_connection(max_retries=1)
        queue = kombu_conn.SimpleQueue("cscore-stack-test")
        queue.put({"n": 1})
        assert queue.get(timeout=2).payload == {"n": 1}
        queue.close()


def _start_small(state: Path) -> LocalStack:
    """Redis only (S3 given as a real server, never contacted): starts in a fraction of a second."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    environ["CSCORE_S3_ENDPOINT"] = "http://127.0.0.1:9"
    return LocalStack(state, workers=0, airflow=False, brokers=False, sim_tee=False,
                      environ=environ, out=lambda _: None).start()


def test_a_running_stack_is_refused_then_stop_leaves_nothing(tmp_path: Path) -> None:
    crashed = _start_small(tmp_path)  # never stopped: as if its owner had crashed, or `cscore stack start` exited
    with pytest.raises(StackError, match="another local stack is running"):
        _start_small(tmp_path)  # while its owner lives, its lock says so
    assert crashed._lock is not None
    crashed._lock.close()  # the owner's exit: its flock goes with its process, its parts keep running
    crashed_pids = set().union(*(procs.tree(pid) for pid in crashed.pids().values()))
    with pytest.raises(StackError, match=r"a stack is running here \(.*pids redis \d+\); `cscore --state-dir .* "
                                         r"stack stop` first"):
        _start_small(tmp_path)  # never taken for stale: its data and every shell that sourced stack.env live on
    assert all(procs.alive(p) for p in crashed_pids)
    assert (tmp_path / "pids" / "redis.pid").exists()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "pids" / "bystander.pid").write_text(f"{bystander.pid}\n")  # a recycled pid: not ours
    again = None
    try:
        assert sorted(procs.clean_stale(tmp_path)) == ["bystander", "redis"]  # what `cscore stack stop` runs
        assert not any(procs.alive(p) for p in crashed_pids)
        assert bystander.poll() is None
        again = _start_small(tmp_path)
        started = set().union(*(procs.tree(pid) for pid in again.pids().values()))
        assert started
        again.stop()
        assert not any(procs.alive(p) for p in started)
        assert not list((tmp_path / "pids").iterdir())
    finally:
        for s in (crashed, again):
            if s is not None:
                s.stop()  # reaps the crashed run's children (this process started them)
        bystander.kill()
        bystander.wait()


def test_given_urls_are_used_and_nothing_is_started(tmp_path: Path, clean_environ: dict[str, str]) -> None:
    environ = {**clean_environ, "CSCORE_S3_ENDPOINT": "http://127.0.0.1:9000", "CSCORE_BUCKET": "prod",
               "CSCORE_SQS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/m",
               "CSCORE_CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
               "CSCORE_OWNER_BROKER_URL": "https://kbs.owner.example", "CSCORE_TEE": "configfs-tsm"}
    with LocalStack(tmp_path, workers=0, airflow=False, brokers=False, environ=environ,
                    out=lambda _: None) as s:
        assert s.pids() == {}
        assert s.env["CSCORE_S3_ENDPOINT"] == "http://127.0.0.1:9000"
        assert s.env["CSCORE_BUCKET"] == "prod"
        assert s.env["CSCORE_CELERY_BROKER_URL"] == "amqp://guest:guest@127.0.0.1:5672//"
        assert s.env["CSCORE_CELERY_RESULT_BACKEND"] == "rpc://"
        assert s.env["CSCORE_OWNER_BROKER_URL"] == "https://kbs.owner.example"
        assert s.env["CSCORE_TEE"] == "configfs-tsm"
        assert "CSCORE_SIM_TEE_DIR" not in s.env
