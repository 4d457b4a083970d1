"""The whole pipeline on real parts: S3 event -> asset watcher -> DAG -> Celery workers -> results.

Tests in this module share one stack and run in order; the last one scans every platform-side store
for the canaries planted in emails and in the model, and for the model's data key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from cscore.demo import TENANT, onboard_tenant, owner_trust
from dags.cscore_platform.intake import batch_run_prefix
from enclave.measurement import code_measurement
from enclave.runner import ContractSession
from enclave.scoring import ModelSession
from enclave.signing import sign_json, unverified_payload
from infra.local.stack import LocalStack
from sdk.contracts import DIGITS_CONTRACT, DIGITS_TASK
from sdk.corpus import CorpusEmail
from sdk.digits import digits_split, export_digits_onnx, train_digits_model, write_digit_files
from sdk.emails import Email, email_text
from sdk.images import ImageInputError, read_images
from sdk.models import ModelListing, find_model, list_models
from sdk.owner import OwnerKeys, SubmittedBatch, resubmit_batch, submit_batch, submit_table, wait_for_batch
from sdk.party import Party
from sdk.platform import published_worker_config
from sdk.provider import Offer, publish_model
from sdk.results import fetch_results
from sdk.storage import ObjectStore
from sdk.training import export_onnx, train_spam_model
from tests.e2e.canaries import EMAIL_CANARIES, MODEL_CANARY, encoded_forms, redis_dump
from tests.enclave.heavy_models import CONTRACT_DOC as HEAVY_CONTRACT
from tests.enclave.heavy_models import columns as heavy_columns
from tests.enclave.heavy_models import slow_model
from wire.contract import Contract
from wire.shard import LIMITS_VARIABLE

pytestmark = pytest.mark.e2e
WAIT_S = 600.0
_state: dict[str, Any] = {}


def _owner_emails(held_out: list[CorpusEmail]) -> list[Email]:
    emails = [Email(e.message_id, email_text(e.raw)) for e in held_out]
    for i, canary in enumerate(EMAIL_CANARIES):  # plant canaries in a few real emails
        k = i * 97
        emails[k] = Email(emails[k].message_id, f"{emails[k].text}\n{canary}")
    return emails


def _submit(emails: list[Email], model: ModelListing, measurements: list[str] | None = None) -> SubmittedBatch:
    return submit_batch(emails, model, tenant=TENANT, owner=Party.from_env("owner"), store=ObjectStore(),
                        measurements=measurements or [code_measurement().hex()])


def _wait(batch_id: str) -> dict[str, Any]:
    return wait_for_batch(ObjectStore(), TENANT, batch_id, timeout=WAIT_S)


def test_provider_publishes_and_owner_sees_the_model(stack: LocalStack, model_bytes: bytes) -> None:
    store = ObjectStore()
    published = publish_model(model_bytes, "spam-filter", provider=Party.from_env("provider"), store=store,
                              allowed_measurements=[code_measurement().hex()])
    owner = Party.from_env("owner")
    onboard_tenant(owner, store, stack.state_dir)
    with pytest.raises(LookupError, match="pin the provider's key"):
        find_model(store, "spam-filter", owner.trusted_providers())  # not yet trusted: refused
    owner.trust_provider(Party.from_env("provider").public_key())
    listing = find_model(store, "spam-filter", owner.trusted_providers())
    assert (listing.version, listing.digest) == (published.version, "sha256:" + hashlib.sha256(model_bytes).hexdigest())
    stored = store.get(f"models/spam-filter/{listing.version}/model.onnx.enc")
    assert MODEL_CANARY.encode() not in stored and len(stored) == len(model_bytes) + 12 + 16
    _state["model"] = listing
    # A newer, different version: batches that name version 1 must still be scored by version 1.
    newer = publish_model(_small_model(), "spam-filter", provider=Party.from_env("provider"), store=store,
                          allowed_measurements=[code_measurement().hex()])
    assert [(m.name, m.version) for m in list_models(store)] == [("spam-filter", 1), ("spam-filter", 2)]
    assert find_model(store, "spam-filter", owner.trusted_providers()).digest == newer.digest != listing.digest


def _small_model() -> bytes:
    texts = ["win money now", "free prize claim", "meeting at noon", "lunch tomorrow?"] * 5
    return export_onnx(train_spam_model(texts, [1, 1, 0, 0] * 5))


def test_two_concurrent_batches_score_exactly(stack: LocalStack, corpus: Any, model_bytes: bytes) -> None:
    _, held_out = corpus
    emails = _owner_emails(held_out)
    small = emails[:300]
    with ThreadPoolExecutor(2) as pool:
        big_f = pool.submit(_submit, emails, _state["model"])
        small_f = pool.submit(_submit, [Email("copy-" + e.message_id, e.text) for e in small], _state["model"])
        big, small_batch = big_f.result(), small_f.result()
    for batch in (big, small_batch):
        status = _wait(batch.batch_id)
        assert status["state"] == "succeeded", status
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, big.batch_id, owner=Party.from_env("owner"), store=ObjectStore(),
                            anchors=anchors, policy=policy)
    ids = results.table.column("message_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(emails)
    by_id = dict(zip(ids, results.table.column("spam_probability").to_numpy(), strict=True))
    expected, labels = ModelSession(model_bytes).score([e.text for e in emails])
    got = np.array([by_id[e.message_id] for e in emails], dtype=np.float32)
    assert got.tobytes() == expected.astype(np.float32).tobytes()  # bit for bit
    assert results.measurements == [code_measurement().hex()]
    _state["small"] = small_batch
    # Operators see the same work in the workers' Prometheus metrics, summed over both workers' pools.
    scraped = [_metric_samples(url) for url in stack.worker_metrics.values()]
    rows = sum(m.get(("cscore_worker_rows_total", (("task", "score_shard"),)), 0.0) for m in scraped)
    shards = sum(m.get(("cscore_worker_tasks_total", (("outcome", "ok"), ("task", "score_shard"))), 0.0)
                 for m in scraped)
    assert rows >= len(emails) + len(small) and shards >= 2


def _airflow(stack: LocalStack, *args: str) -> str:
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run([airflow, *args], env=stack.child_env(), capture_output=True, text=True,
                          check=True, timeout=120).stdout


def _runs(stack: LocalStack) -> list[dict[str, Any]]:
    out = _airflow(stack, "dags", "list-runs", "cscore_batch", "-o", "json")
    # The CLI may print log lines before its JSON; the runs are the line that is a JSON list.
    lines = [line for line in out.splitlines() if line.startswith("[{") or line.strip() == "[]"]
    return json.loads(lines[-1]) if lines else []


def _finished_runs(stack: LocalStack) -> list[dict[str, Any]]:
    return [r for r in _runs(stack) if r.get("state") in {"success", "failed"}]


def test_the_run_of_a_batch_is_found_by_its_batch_id(stack: LocalStack) -> None:
    batch: SubmittedBatch = _state["small"]
    prefix = batch_run_prefix(TENANT, batch.batch_id)  # batch__<tenant>__<batch>__<time>, set by cscore_intake
    assert _wait(batch.batch_id)["run_id"].startswith(prefix)
    found = [r for r in _runs(stack) if r["run_id"].startswith(prefix)]
    assert [r["state"] for r in found] == ["success"], found


def test_owner_results_started_while_the_batch_runs_exit_cleanly(stack: LocalStack, corpus: Any) -> None:
    # Once 5 of 21 such runs printed their summary, then aborted in native code at exit (134).
    _, held_out = corpus
    batch = _submit([Email("early-" + e.message_id, email_text(e.raw)) for e in held_out[:120]], _state["model"])
    argv = [sys.executable, "-m", "cscore", "--state-dir", str(stack.state_dir), "owner", "results", batch.batch_id,
            "--tenant", TENANT, "--accept-simulated", "--json", "--wait", str(WAIT_S)]
    with ThreadPoolExecutor(3) as pool:  # started together, before the batch is done
        runs = list(pool.map(lambda _: subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S + 60),
                             range(3)))
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout.strip().splitlines()[-1])["emails_scored"] == 120


def test_same_manifest_event_twice_processes_once(stack: LocalStack) -> None:
    store = ObjectStore()
    batch: SubmittedBatch = _state["small"]
    before_status = _wait(batch.batch_id)
    prefix = f"results/{TENANT}/{batch.batch_id}/"
    before = {k: store.get(k) for k in store.keys(prefix)}
    runs_before = len(_finished_runs(stack))
    manifest_key = f"incoming/{TENANT}/{batch.batch_id}/manifest.jws"
    # the same manifest's event, delivered again (S3 delivers at least once; the owner's --resubmit refuses a
    # batch that succeeded, so the bucket is written as the platform's event source would see it)
    store.put(manifest_key, store.get(manifest_key), "application/jose")
    deadline = time.monotonic() + WAIT_S
    while len(_finished_runs(stack)) <= runs_before and time.monotonic() < deadline:
        time.sleep(2)
    assert len(_finished_runs(stack)) > runs_before, "the duplicate event never started a DAG run"
    after = {k: store.get(k) for k in store.keys(prefix)}
    assert after == before  # no shard scored again, nothing duplicated
    assert _wait(batch.batch_id)["run_id"] == before_status["run_id"]


def test_refused_release_fails_the_batch_which_can_be_resubmitted(stack: LocalStack, corpus: Any) -> None:
    _, held_out = corpus
    emails = [Email("retry-" + e.message_id, email_text(e.raw)) for e in held_out[:200]]
    wrong = hashlib.sha384(b"some other enclave").hexdigest()
    batch = _submit(emails, _state["model"], measurements=[wrong])
    status = _wait(batch.batch_id)
    assert status["state"] == "failed"
    assert "measurement" in status["reason"]
    store = ObjectStore()
    assert store.get_if_exists(batch.manifest_key) is not None  # the input stays where it was
    assert not [k for k in store.keys(f"results/{TENANT}/{batch.batch_id}/") if k.endswith(".parquet")]
    # The owner grants the right measurement and submits the same manifest again.
    config = published_worker_config(store).digest_hex()  # the workers' configuration, as the owner reviewed it
    Party.from_env("owner").broker().grant(batch.batch_id, _state["model"].digest, [code_measurement().hex()],
                                           OwnerKeys.for_batch(TENANT, batch.batch_id).all(),
                                           config_digests=[config], rows=len(emails))
    resubmit_batch(TENANT, batch.batch_id, store)
    deadline = time.monotonic() + WAIT_S
    while _wait(batch.batch_id)["state"] == "failed" and time.monotonic() < deadline:
        time.sleep(1)
    assert _wait(batch.batch_id)["state"] == "succeeded"


def _bad_manifest(store: ObjectStore, batch_id: str, payload: dict[str, Any] | None, raw: bytes | None = None) -> str:
    key = f"incoming/{TENANT}/{batch_id}/manifest.jws"
    body = raw if raw is not None else sign_json(payload or {}, Party.from_env("owner").signing_key()).encode()
    store.put(key, body)
    return key


def test_bad_manifests_fail_with_a_named_reason(stack: LocalStack) -> None:
    store = ObjectStore()
    good = unverified_payload(store.get(_state["small"].manifest_key).decode(), what="manifest")

    def variant(batch_id: str, **changes: Any) -> dict[str, Any]:
        payload = {**good, "batch_id": batch_id, "results": {"prefix": f"results/{TENANT}/{batch_id}/"}}
        payload["objects"] = [{**o, "key": o["key"].replace(good["batch_id"], batch_id)} for o in good["objects"]]
        return {**payload, **changes}

    cases = {
        "bad-unsigned": (None, b'{"type": "cscore.manifest/v1"}', "signed by tenant"),
        "bad-missing": (variant("bad-missing"), None, "NoSuchKey|404|Not Found"),
        "bad-model": (variant("bad-model", model={**good["model"], "name": "no-such-model"}), None,
                      "expected a published model no-such-model"),
    }
    for obj in good["objects"]:  # bad-model's data is all there: only its model is wrong
        store.put(obj["key"].replace(good["batch_id"], "bad-model"), store.get(obj["key"]))
    for batch_id, (payload, raw, _) in cases.items():
        _bad_manifest(store, batch_id, payload, raw)
    for batch_id, (_, _, reason) in cases.items():
        status = _wait(batch_id)
        assert status["state"] == "failed", (batch_id, status)
        assert re.search(reason, status["reason"]), (batch_id, status["reason"])


def test_task_logs_tell_each_batch_in_sentences_with_fields(stack: LocalStack) -> None:
    batch = _state["small"].batch_id
    lines, dumped = [], []
    for path in (stack.state_dir / "airflow" / "logs").rglob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if "Returned value was" in line:
                dumped.append(line[:200])
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("batch_id") == batch:
                lines.append(record)
    steps = {r.get("step") for r in lines}
    assert {"validate", "attest", "score", "finalize"} <= steps, steps
    signed = [r for r in lines if r.get("step") == "validate" and "signed by the tenant's key" in r["event"]]
    assert signed and signed[0]["manifest_sha256"] and batch in signed[0]["event"]
    attested = [r for r in lines if r.get("step") == "attest"]
    assert all(r["measurement"] == code_measurement().hex() for r in attested)
    # One worker identity (Celery's node name) and the claims digest the broker logged, for the auditor's join.
    assert attested and all(r["worker"].startswith("cscore-worker-") and r["claims_digest"] for r in attested)
    counts = [r for r in lines if r.get("step") == "score" and "ok /" in r["event"]]
    assert counts and counts[-1]["failed"] == 0 and counts[-1]["ok"] == counts[-1]["total"]
    assert not dumped, dumped  # no task's return value is dumped into its log


def test_an_image_batch_names_each_file_with_class_and_probabilities_bit_exact(stack: LocalStack,
                                                                               tmp_path: Path) -> None:
    """Another provider's kind of model on the same DAG, brokers, PME and receipts: digits as PNG/JPEG files."""
    store, owner = ObjectStore(), Party.from_env("owner")
    split = digits_split()
    onnx_bytes = export_digits_onnx(train_digits_model(split.train_x, split.train_y))
    vision = Party.from_env("vision")  # a second provider: its own broker, CA and card-signing key
    publish_model(onnx_bytes, "digits", provider=vision, store=store, allowed_measurements=[code_measurement().hex()],
                  offer=Offer(task=DIGITS_TASK, contract=DIGITS_CONTRACT, metrics={"accuracy": 0.97}))
    with pytest.raises(LookupError, match="pin the provider's key"):
        find_model(store, "digits", owner.trusted_providers())  # trusting one provider is not trusting another
    owner.trust_provider(vision.public_key())
    assert [m.name for m in list_models(store, owner.trusted_providers(), task=DIGITS_TASK)] == ["digits"]
    listing = find_model(store, "digits", owner.trusted_providers())
    assert listing.card is not None and listing.card.broker == "vision"
    truth = write_digit_files(split.test_x, split.test_y, tmp_path, limit=45)
    (tmp_path / "invoice.png").write_bytes(b"%PDF-1.7\n%%EOF\n")  # refused per file, before any upload
    before = set(store.keys(f"incoming/{TENANT}/"))
    dry = subprocess.run([sys.executable, "-m", "cscore", "owner", "submit", str(tmp_path), "--images", "--model",
                          "digits", "--tenant", TENANT, "--dry-run", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert dry.returncode == 2, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["model"], report["ok"], report["images"]) == ("digits:1", False, len(truth))
    assert [f["error"] for f in report["files"] if f["error"]] == [
        "invoice.png: expected a PNG or JPEG image, found a PDF document"]
    assert set(store.keys(f"incoming/{TENANT}/")) == before  # a dry run uploads nothing
    with pytest.raises(ImageInputError, match="invoice.png: expected a PNG or JPEG image, found a PDF document"):
        read_images(tmp_path, listing.card.contract, "digits")
    (tmp_path / "invoice.png").unlink()
    table = read_images(tmp_path, listing.card.contract, "digits")
    batch = submit_table(table, listing, tenant=TENANT, owner=owner, store=store,
                         measurements=[code_measurement().hex()])
    status = _wait(batch.batch_id)
    assert status["state"] == "succeeded", status
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, batch.batch_id, owner=owner, store=store, anchors=anchors, policy=policy)
    assert results.table.column_names == ["file", "class", "probabilities"]
    assert sorted(results.table.column("file").to_pylist()) == sorted(truth)
    local = ContractSession(onnx_bytes, listing.card.contract).results(
        table.column("file").combine_chunks(), {"image": table.column("image").to_pylist()}, None)
    order = {f: i for i, f in enumerate(results.table.column("file").to_pylist())}
    picked = [order[f] for f in table.column("file").to_pylist()]
    got = results.table.take(picked)
    assert got.column("class").to_pylist() == local["class"].to_pylist()
    assert (np.array(got.column("probabilities").to_pylist(), dtype=np.float32).tobytes()
            == np.array(local["probabilities"].to_pylist(), dtype=np.float32).tobytes())  # bit for bit
    correct = sum(int(c) == truth[f] for f, c in zip(got.column("file").to_pylist(), got.column("class").to_pylist(),
                                                     strict=True))
    assert correct >= 0.9 * len(truth)


DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]  # scikit-learn's load_diabetes columns
DIABETES_CONTRACT: dict[str, Any] = {
    "id_column": "patient",
    "inputs": [{"tensor": "x", "columns": DIABETES, "dtype": "float32", "shape": [None, len(DIABETES)],
                "preprocess": {"kind": "numbers"}}],
    "outputs": [{"tensor": "variable", "column": "progression", "kind": "value"}],
    "classes": None,
}


def _airflow_variable(stack: LocalStack, name: str, value: str | None) -> None:
    """The platform operator's setting, made with Airflow's own CLI against the running stack's database."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    argv = [airflow, "variables", "set", name, value] if value is not None else [airflow, "variables", "delete", name]
    subprocess.run(argv, env=stack.child_env(), check=True, capture_output=True, timeout=300)


def test_a_numbers_model_scores_bit_exact_and_one_over_the_platforms_limits_is_stopped(stack: LocalStack) -> None:
    """A third kind of contract (numeric columns -> a regression value); then a provider's model too slow for the
    operator's per-batch limit fails its batch naming the limit, and the same batch succeeds once it is raised."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    store, owner, provider = ObjectStore(), Party.from_env("owner"), Party.from_env("provider")
    x, y = load_diabetes(return_X_y=True)
    regression = convert_sklearn(LinearRegression().fit(x[:300], y[:300]),
                                 initial_types=[("x", FloatTensorType([None, len(DIABETES)]))], target_opset=17)
    onnx_bytes = bytes(regression.SerializeToString())
    measured = [code_measurement().hex()]
    publish_model(onnx_bytes, "diabetes", provider=provider, store=store, allowed_measurements=measured,
                  offer=Offer(task="regression", contract=DIABETES_CONTRACT))
    listing = find_model(store, "diabetes", owner.trusted_providers())
    table = pa.table({"patient": [f"p{i}" for i in range(300, len(x))],
                      **{name: pa.array(x[300:, k]) for k, name in enumerate(DIABETES)}})
    batch = submit_table(table, listing, tenant=TENANT, owner=owner, store=store, measurements=measured)
    assert _wait(batch.batch_id)["state"] == "succeeded"
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, batch.batch_id, owner=owner, store=store, anchors=anchors, policy=policy)
    got = results.table.sort_by("patient")
    local = pa.table(ContractSession(onnx_bytes, Contract.parse(DIABETES_CONTRACT)).results(
        table.column("patient").combine_chunks(), {c: table.column(c).to_pylist() for c in DIABETES}, None)
    ).sort_by("patient")
    assert got.column("patient").to_pylist() == local.column("patient").to_pylist()
    assert got.column("progression").to_numpy().tobytes() == local.column("progression").to_numpy().tobytes()

    publish_model(slow_model(), "heavy", provider=provider, store=store, allowed_measurements=measured,
                  offer=Offer(task="regression", contract=HEAVY_CONTRACT))
    rows = pa.table({"id": [f"r{i}" for i in range(70)], **{k: pa.array(v) for k, v in heavy_columns(70).items()}})
    _airflow_variable(stack, LIMITS_VARIABLE, json.dumps({"max_ms_per_row": 1}))
    try:
        heavy = submit_table(rows, find_model(store, "heavy", owner.trusted_providers()), tenant=TENANT, owner=owner,
                             store=store, measurements=measured)
        status = _wait(heavy.batch_id)
    finally:
        _airflow_variable(stack, LIMITS_VARIABLE, None)
    assert status["state"] == "failed", status
    assert "LimitExceeded" in status["reason"] and "over the batch's limit of 1 ms per row set by the platform" in \
        status["reason"] and "model heavy:1" in status["reason"], status["reason"]
    assert not [k for k in store.keys(f"results/{TENANT}/{heavy.batch_id}/") if k.endswith(".parquet")]
    resubmit_batch(TENANT, heavy.batch_id, store)  # under the default limits the same batch goes through
    deadline = time.monotonic() + WAIT_S
    while _wait(heavy.batch_id)["state"] == "failed" and time.monotonic() < deadline:
        time.sleep(1)
    assert _wait(heavy.batch_id)["state"] == "succeeded"


def _metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus endpoint's samples: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metrics_text(stack: LocalStack) -> bytes:
    """Every worker's and broker's /metrics, as scraped (the local brokers set no scrape token)."""
    texts = [httpx.get(url, timeout=10).text for url in stack.worker_metrics.values()]
    for party, ca in stack.broker_cas.items():
        url = stack.env[f"CSCORE_{party.upper()}_BROKER_URL"]
        texts.append(httpx.get(f"{url}/metrics", timeout=10, verify=ssl.create_default_context(cafile=str(ca))).text)
    return "\n".join(texts).encode()




def _files(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_the_auditor_finds_the_log_whole_and_every_release_allowed(stack: LocalStack) -> None:
    from audit.cli import open_log, sync_from_env, witnesses
    from audit.verify import verify_audit

    sync_from_env(stack.state_dir)
    anchors, policy = owner_trust(accept_simulated=True)
    findings = verify_audit(open_log(None, stack.state_dir), ObjectStore(), anchors, policy,
                            witnesses=witnesses(stack.state_dir))
    errors = [f"{f.check}: {f.message}" for f in findings if f.severity == "error"]
    assert not errors, "\n".join(errors[:20])
    # Which worker got each key comes from the receipts the enclaves signed (their sessions' claims digests).
    from audit.show import batch_report

    batch = _state["small"].batch_id
    assert not [f for f in findings if f.check == "worker" and f.batch_id == batch], findings
    report = batch_report(open_log(None, stack.state_dir), ObjectStore(), batch, findings)
    releases = next(s for s in report["sections"] if s["title"] == "Key releases")["rows"]
    assert releases and all(r["cells"]["worker"].startswith("cscore-worker-") for r in releases), releases
    attested = next(s for s in report["sections"] if s["title"] == "Attestation")["rows"]
    assert attested and all("bound" in r["cells"]["note"] or "binds" in r["cells"]["note"] for r in attested)


def test_no_canary_or_key_in_any_platform_store(stack: LocalStack) -> None:
    store = ObjectStore()
    card = unverified_payload(store.get(f"models/spam-filter/{_state['model'].version}/card.jws").decode(),
                              what="card")
    dek = Party.from_env("provider").broker().unwrap(card["key_id"], base64.b64decode(card["wrapped_dek"]))
    secrets = [c.encode() for c in [MODEL_CANARY, *EMAIL_CANARIES]] + encoded_forms(dek)
    stores = {
        "s3": b"\n".join(store.get(k) for k in store.keys("")),
        "redis": redis_dump(stack),
        "airflow (database and task logs)": _files(stack.state_dir / "airflow"),
        "process logs (workers, brokers, airflow)": _files(stack.state_dir / "logs"),
        "metrics (workers, brokers)": _metrics_text(stack),
    }
    # The scan is only meaningful if it reads real content: ciphertext in S3, task traffic in the logs.
    assert len(stores["s3"]) > 100_000
    assert b"cscore.score_shard" in stores["process logs (workers, brokers, airflow)"]
    assert b"cscore_worker_rows_total" in stores["metrics (workers, brokers)"]
    assert b"cscore_broker_decisions_total" in stores["metrics (workers, brokers)"]
    leaks = [(name, s[:24]) for name, blob in stores.items() for s in secrets if s in blob]
    assert leaks == []
