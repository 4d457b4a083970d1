"""`cscore bench`: what confidentiality costs, measured on the same DAG and the same workers.

The same emails go through the pipeline twice per round, alternating which goes first: confidential
(PME, attestation, both key brokers, receipts verified) and plaintext baseline (plain Parquet, no brokers).
Emails/s is counted from the owner's submit to its decrypted (or read) results.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cscore.demo import TENANT, corpus_split, onboard_tenant, owner_emails, owner_trust
from enclave.measurement import code_measurement
from infra.local.stack import LocalStack
from sdk.emails import Email, email_text
from sdk.models import find_model
from sdk.owner import submit_batch, wait_for_batch
from sdk.party import Party
from sdk.provider import publish_baseline_model, publish_model
from sdk.results import fetch_results
from sdk.storage import ObjectStore
from sdk.training import export_onnx, train_spam_model

MODES = ("confidential", "plaintext")


@dataclass
class BenchReport:
    emails_per_batch: int
    rounds: int
    seconds: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    # per mode, per phase (submit, pipeline, results): where the time goes
    phases: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {m: {"submit": [], "pipeline": [], "results": []} for m in MODES})

    def emails_per_s(self, mode: str) -> float:
        return self.emails_per_batch / statistics.median(self.seconds[mode])

    @property
    def ratio(self) -> float:
        return self.emails_per_s("confidential") / self.emails_per_s("plaintext")

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), **{f"{m}_emails_per_s": self.emails_per_s(m) for m in MODES}, "ratio": self.ratio}


def run_bench(state_dir: Path, *, rounds: int = 3, copies: int = 2, workers: int = 2, warmup: int = 1,
              say: Callable[[str], None] = print) -> BenchReport:
    """Start the stack, publish both models, run `rounds` alternating pairs of batches, stop the stack."""
    stack = LocalStack(state_dir, workers=workers, airflow=True, out=say)
    stack.start()
    os.environ.update(stack.env)
    try:
        return _measure(stack, rounds, copies, warmup, say)
    finally:
        stack.stop()


def _measure(stack: LocalStack, rounds: int, copies: int, warmup: int, say: Callable[[str], None]) -> BenchReport:
    store = ObjectStore()
    train, held_out = corpus_split()
    onnx_bytes = export_onnx(train_spam_model([email_text(e.raw) for e in train], [e.label for e in train]))
    provider = Party.from_env("provider")
    publish_model(onnx_bytes, "spam-filter", provider=provider, store=store,
                  allowed_measurements=[code_measurement().hex()])
    publish_baseline_model(onnx_bytes, "spam-filter-baseline", provider=provider, store=store)
    owner = Party.from_env("owner")
    onboard_tenant(owner, store, stack.state_dir)
    owner.trust_provider(provider.public_key())
    base = owner_emails(held_out)
    emails = [Email(f"{e.message_id}#{c}", e.text) for c in range(copies) for e in base]
    report = BenchReport(len(emails), rounds)
    for w in range(warmup):  # first batches pay one-off costs (model load, first attestation): not counted
        for mode in MODES:
            phases = _one_batch(store, owner, emails, mode)
            say(f"[bench] warm-up {w + 1}/{warmup} {mode:12} {sum(phases.values()):.1f} s (not counted)")
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            phases = _one_batch(store, owner, emails, mode)
            seconds = sum(phases.values())
            report.seconds[mode].append(seconds)
            for phase, value in phases.items():
                report.phases[mode][phase].append(value)
            say(f"[bench] round {r + 1}/{rounds} {mode:12} {len(emails)} emails in {seconds:.1f} s "
                f"({len(emails) / seconds:.0f} emails/s; " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
                + ")")
    return report


def _one_batch(store: ObjectStore, owner: Party, emails: list[Email], mode: str) -> dict[str, float]:
    t0 = time.monotonic()
    baseline = mode == "plaintext"
    model = find_model(store, "spam-filter-baseline" if baseline else "spam-filter", owner.trusted_providers())
    batch = submit_batch(emails, model, tenant=TENANT, owner=owner, store=store,
                         measurements=[code_measurement().hex()], plaintext_baseline=baseline)
    t1 = time.monotonic()
    status = wait_for_batch(store, TENANT, batch.batch_id)
    t2 = time.monotonic()
    if status["state"] != "succeeded":
        raise RuntimeError(f"{mode} batch {batch.batch_id} failed: {status.get('reason')}")
    if baseline:
        rows = _plain_results(store, batch.batch_id).num_rows
    else:
        anchors, policy = owner_trust(accept_simulated=True)
        rows = fetch_results(TENANT, batch.batch_id, owner=owner, store=store, anchors=anchors,
                             policy=policy).table.num_rows
    if rows != len(emails):
        raise RuntimeError(f"{mode} batch {batch.batch_id}: expected {len(emails)} results, got {rows}")
    return {"submit": t1 - t0, "pipeline": t2 - t1, "results": time.monotonic() - t2}


def _plain_results(store: ObjectStore, batch_id: str) -> pa.Table:
    manifest = json.loads(store.get(f"results/{TENANT}/{batch_id}/result-manifest.json"))
    return pa.concat_tables(pq.read_table(io.BytesIO(store.get(s["output_key"]))) for s in manifest["shards"])
