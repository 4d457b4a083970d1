"""docs/OWNER.md "Reading results with Spark": a batch scored by the real stack (Airflow, a Celery worker with the
simulated SEV-SNP TEE, moto, the owner's key broker over HTTPS), its encrypted result objects read by a local Spark
through sdk/spark's KMS client (Java, compiled here), give exactly what `cscore owner results` writes; a forged
token, a file the owner's broker refuses to unwrap for, and plain HTTP to a remote broker give a clear error and no
row; so do forged answers of a broker (a JWE to another key, another algorithm, an ephemeral point off P-256)."""

from __future__ import annotations

import base64
import json
import logging
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from joserfc import jwe
from joserfc.jwk import ECKey, RSAKey
from pyspark.sql import SparkSession

from cscore.demo import TENANT
from enclave.pme import PmeKeys
from infra.local.stack import LocalStack
from keybroker.tls import ensure_local_tls
from sdk.owner import OwnerKeys
from sdk.party import Party
from sdk.results import fetch_results, owner_trust
from sdk.spark import CLIENT_CLASS, CRYPTO_FACTORY, build_client_jar, read_options
from sdk.storage import ObjectStore
from tests.enclave.test_pme import LocalWrapper
from tests.stacks import running_stack, toy_batch

# pyspark 4.3 warns on import that it does not fully support pandas >= 3 (locked here): its pandas API is not used.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]
EMAILS = 150
COLUMNS = ["message_id", "spam_probability", "label"]
TOKEN = "parquet.encryption.key.access.token"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("spark-stack"), workers=1, airflow=True) as running:
        yield running


@pytest.fixture(scope="module")
def batch_id(stack: LocalStack) -> str:
    _, batch, status = toy_batch(stack.state_dir, "spark", EMAILS, timeout=480)
    assert status["state"] == "succeeded", status.get("reason")
    return batch.batch_id


@pytest.fixture(scope="module")
def shards(batch_id: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The batch's encrypted result objects that its verified receipts name (docs/OWNER.md), copied to a folder."""
    owner, store = Party.from_env("owner"), ObjectStore()
    anchors, policy = owner_trust(
        accept_simulated=True, measurements=owner.broker().get_grant(batch_id)["measurements"]
    )
    verified = fetch_results(TENANT, batch_id, owner=owner, store=store, anchors=anchors, policy=policy)
    folder = tmp_path_factory.mktemp("shards")
    for receipt in verified.receipts:
        key = receipt.payload["output"]["key"]
        data = store.get(key)
        assert data.endswith(b"PARE") and b"@spark>" not in data  # encrypted footer, no message id in clear
        (folder / key.rsplit("/", 1)[1]).write_bytes(data)
    assert len(list(folder.iterdir())) == len(verified.receipts) > 0
    return folder


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    work = tmp_path_factory.mktemp("spark")
    jar = build_client_jar(work / "cscore-owner-kms.jar")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("cscore-owner-results")
        .config("spark.driver.extraClassPath", str(jar))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.warehouse.dir", str(work / "warehouse"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("OFF")  # the refusals below are expected: their stack traces are noise
    # py4j says "Closing down clientserver connection" (INFO) from __del__ at exit, after pytest closed the stream.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    yield session
    session.stop()


def _owner_results(stack: LocalStack, batch_id: str, out: Path) -> dict[str, tuple[Any, Any]]:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cscore",
            "--state-dir",
            str(stack.state_dir),
            "owner",
            "results",
            batch_id,
            "--tenant",
            TENANT,
            "--accept-simulated",
            "--out",
            str(out),
        ],
        env=stack.child_env(),
        cwd=stack.repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return {r["message_id"]: (r["spam_probability"], r["label"]) for r in pq.read_table(out).to_pylist()}


def _owner_unwraps(owner: Party, batch_id: str) -> int:
    return sum(e["operation"] == "admin.unwrap" and e["batch_id"] == batch_id for e in owner.broker().decisions())


def _refusal(spark: SparkSession, options: dict[str, str], path: Path) -> str:
    with pytest.raises(Exception) as caught:  # py4j's Py4JJavaError, or pyspark's own wrapper of it
        spark.read.options(**options).parquet(str(path)).collect()
    return str(caught.value)


def test_spark_reads_the_scores_owner_results_gives(
    stack: LocalStack, batch_id: str, shards: Path, spark: SparkSession, tmp_path: Path
) -> None:
    expected = _owner_results(stack, batch_id, tmp_path / "results.parquet")
    assert len(expected) == EMAILS
    owner = Party.from_env("owner")
    before = _owner_unwraps(owner, batch_id)
    rows = spark.read.options(**read_options(owner, batch_id)).parquet(str(shards)).select(*COLUMNS).collect()
    assert {r["message_id"]: (r["spam_probability"], r["label"]) for r in rows} == expected
    assert len(rows) == EMAILS
    assert _owner_unwraps(owner, batch_id) > before  # Spark's unwraps went to the broker, logged under the batch


def test_a_forged_token_gets_a_refusal_and_no_row(batch_id: str, shards: Path, spark: SparkSession) -> None:
    forged = "forged-" + "0" * 40
    options = {**read_options(Party.from_env("owner"), batch_id), TOKEN: forged}
    message = _refusal(spark, options, shards)
    assert "KeyAccessDeniedException" in message and "refused to unwrap under key" in message
    assert "(HTTP 401)" in message and "admin token" in message
    assert forged not in message and "@spark>" not in message


def test_a_file_the_platform_substituted_is_refused_by_the_owners_broker(
    batch_id: str, spark: SparkSession, tmp_path: Path
) -> None:
    """The platform writes its own rows under the batch's result key id (ids are not secret) with a key of its
    own: the owner's broker finds the wrapped key does not authenticate under its master key and answers 400."""
    result_key = OwnerKeys.for_batch(TENANT, batch_id).results
    forged = pa.table({"message_id": ["<m0@spark>"], "spam_probability": [0.0], "label": [0]})
    with PmeKeys(LocalWrapper()) as platform_keys:
        (tmp_path / "shard-00000.parquet").write_bytes(
            platform_keys.write(forged, footer_key=result_key, column_key=result_key, row_group_size=10)
        )
    message = _refusal(spark, read_options(Party.from_env("owner"), batch_id), tmp_path)
    assert "refused to unwrap under key '" + result_key + "' (HTTP 400)" in message
    assert "does not authenticate" in message and "<m0@spark>" not in message


def test_plain_http_to_a_broker_that_is_not_loopback_is_refused_before_any_call(
    batch_id: str, shards: Path, spark: SparkSession
) -> None:
    """The admin token never travels unencrypted off the machine (the rule of wire/endpoint.py). Another token:
    Parquet-MR keeps the keys it unwrapped per token (parquet.encryption.cache.lifetime.seconds), and a client that
    needs no call is never made."""
    options = {
        **read_options(Party.from_env("owner"), batch_id),
        "parquet.encryption.kms.instance.url": "http://broker.invalid:8080",
        TOKEN: "another-token-" + "1" * 32,
    }
    message = _refusal(spark, options, shards)
    assert "expected https:// (plain http:// only to 127.0.0.1, ::1 or localhost), got http://broker.invalid" in message


# -- a broker that answers with a forged JWE (TLS it may pass: a CA the owner was told to trust) ------------------

JWE_ALGS = ["ECDH-ES+A256KW", "RSA-OAEP-256", "A256GCM"]


def _to_another_key(recipient: dict[str, Any]) -> str:
    return jwe.encrypt_compact(
        {"alg": "ECDH-ES+A256KW", "enc": "A256GCM"},
        b"k" * 32,
        ECKey.generate_key("P-256", private=True),
        algorithms=JWE_ALGS,
    )


def _rsa_alg(recipient: dict[str, Any]) -> str:
    return jwe.encrypt_compact(
        {"alg": "RSA-OAEP-256", "enc": "A256GCM"},
        b"k" * 32,
        RSAKey.generate_key(2048, private=True),
        algorithms=JWE_ALGS,
    )


def _off_curve_epk(recipient: dict[str, Any]) -> str:
    """A JWE to the caller's own key whose ephemeral point is moved off P-256 (an invalid-curve probe)."""
    token = jwe.encrypt_compact(
        {"alg": "ECDH-ES+A256KW", "enc": "A256GCM"}, b"k" * 32, ECKey.import_key(recipient), algorithms=JWE_ALGS
    )
    head, *rest = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    y = int.from_bytes(base64.urlsafe_b64decode(header["epk"]["y"] + "=="), "big") + 1
    header["epk"]["y"] = base64.urlsafe_b64encode(y.to_bytes(32, "big")).rstrip(b"=").decode()
    return ".".join([base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode(), *rest])


@contextmanager
def _forging_broker(folder: Path, forge: Callable[[dict[str, Any]], str]) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on loopback answering every unwrap with `forge(recipient_jwk)`; yields its URL and CA."""
    tls = ensure_local_tls(folder / "ca", folder / "tls", "forger")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = json.dumps({"jwe": forge(body["recipient_jwk"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tls.ca_cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("forge", "refusal"),
    [
        (_to_another_key, "does not decrypt to this call's key"),
        (_rsa_alg, "alg expected ECDH-ES+A256KW, got RSA-OAEP-256"),
        (_off_curve_epk, "epk is not a point of P-256"),
    ],
)
def test_a_forged_answer_of_the_broker_gives_no_key(
    forge: Callable[[dict[str, Any]], str], refusal: str, spark: SparkSession, tmp_path: Path
) -> None:
    with PmeKeys(LocalWrapper()) as keys:
        (tmp_path / "part-0.parquet").write_bytes(
            keys.write(pa.table({"message_id": ["<m0@spark>"]}), footer_key="k", column_key="k", row_group_size=10)
        )
    with _forging_broker(tmp_path, forge) as (url, ca):
        options = {
            "parquet.crypto.factory.class": CRYPTO_FACTORY,
            "parquet.encryption.kms.client.class": CLIENT_CLASS,
            "parquet.encryption.kms.instance.url": url,
            TOKEN: f"token-for-{forge.__name__}",  # its own: no key cached for another token is reused
            "cscore.broker.ca": str(ca),
        }
        message = _refusal(spark, options, tmp_path)
    assert refusal in message and "<m0@spark>" not in message
