"""`cscore bench`: what confidentiality costs, measured on the same DAG and the same workers.

The same emails go through the pipeline twice per round, alternating which goes first: confidential
(PME, attestation, both key brokers, receipts verified) and plaintext baseline (plain Parquet, no brokers).
Reported per phase, side by side: the owner's submit, the pipeline (manifest to succeeded), fetching results,
end to end, and inside the workers (summed over shards: keys, read, score, write, sign, store), with the
pipeline's rate over the raw scorer's on the same number of processes.
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
from cscore.scorers import concurrent_scorer_rate, repeated
from enclave.measurement import code_measurement
from enclave.scoring import ModelSession
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
SUBMIT_PHASES = ("submit", "pipeline", "results", "end_to_end")
WORKER_PHASES = ("keys", "read", "score", "write", "sign", "store")
HELD_OUT = 2_418  # emails in the owner's 40 % of the corpus: one unit of --scale


@dataclass
class BenchReport:
    """Per mode, per counted round: seconds of each owner-side phase and the workers' summed phase seconds."""

    emails_per_batch: int
    rounds: int
    workers: int
    raw_scorer_per_s: float = 0.0  # the enclave's ModelSession, 1 thread, one process, on the batch's texts
    # `workers` such scorers at once, in this run, in calls of a worker's slice (cscore.scorers): the denominator
    concurrent_scorers_per_s: float = 0.0
    runs: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {m: [] for m in MODES})

    def median(self, mode: str, phase: str) -> float:
        return statistics.median(run.get(phase, 0.0) for run in self.runs[mode])

    def emails_per_s(self, mode: str, phase: str = "end_to_end") -> float:
        return self.emails_per_batch / self.median(mode, phase)

    @property
    def ratio(self) -> float:
        """Confidential / plaintext emails per second, end to end."""
        return self.emails_per_s("confidential") / self.emails_per_s("plaintext")

    def pipeline_vs_scorer(self, mode: str) -> float:
        """The pipeline's rate over what `workers` raw scorers did at once on the same cores, in this run."""
        return self.emails_per_s(mode, "pipeline") / self.concurrent_scorers_per_s

    def pipeline_vs_single_scorer(self, mode: str) -> float:
        """The former ratio: over one raw scorer timed alone, times `workers` (for comparison)."""
        return self.emails_per_s(mode, "pipeline") / (self.workers * self.raw_scorer_per_s)

    def as_dict(self) -> dict[str, object]:
        medians = {m: {p: self.median(m, p) for p in self.runs[m][0]} for m in MODES if self.runs[m]}
        return {**asdict(self), "medians": medians, "ratio": self.ratio,
                **{f"{m}_emails_per_s": self.emails_per_s(m) for m in MODES},
                **{f"{m}_pipeline_vs_scorer": self.pipeline_vs_scorer(m) for m in MODES},
                **{f"{m}_pipeline_vs_single_scorer": self.pipeline_vs_single_scorer(m) for m in MODES}}

    def table(self) -> str:
        """Phases side by side: median seconds per mode and their ratio, then rates."""
        lines = [f"{self.emails_per_batch} emails per batch, {self.workers} workers, {self.rounds} rounds (medians)",
                 f"{'phase':<28}{'confidential s':>15}{'plaintext s':>13}{'ratio':>8}"]
        for phase in (*SUBMIT_PHASES, "worker_busy", *(f"worker.{p}" for p in WORKER_PHASES)):
            c, p = self.median("confidential", phase), self.median("plaintext", phase)
            lines.append(f"{phase:<28}{c:>15.2f}{p:>13.2f}{(c / p if p else float('nan')):>8.2f}")
        lines.append(f"{'emails/s end to end':<28}{self.emails_per_s('confidential'):>15.0f}"
                     f"{self.emails_per_s('plaintext'):>13.0f}{self.ratio:>8.3f}")
        lines.append(f"{'emails/s pipeline':<28}{self.emails_per_s('confidential', 'pipeline'):>15.0f}"
                     f"{self.emails_per_s('plaintext', 'pipeline'):>13.0f}")
        lines.append(f"{'pipeline / raw scorers':<28}{self.pipeline_vs_scorer('confidential'):>15.3f}"
                     f"{self.pipeline_vs_scorer('plaintext'):>13.3f}   ({self.workers} raw scorers at once: "
                     f"{self.concurrent_scorers_per_s:.0f} emails/s)")
        lines.append(f"{'  former: / (one alone x n)':<28}{self.pipeline_vs_single_scorer('confidential'):>15.3f}"
                     f"{self.pipeline_vs_single_scorer('plaintext'):>13.3f}   (one raw scorer alone: "
                     f"{self.raw_scorer_per_s:.0f} emails/s, x {self.workers})")
        return "\n".join(lines)


def run_bench(state_dir: Path, *, rounds: int = 3, scale: int = 1, workers: int = 2, warmup: int = 1,
              emails: int | None = None, say: Callable[[str], None] = print) -> BenchReport:
    """Start the stack, publish both models, run `rounds` alternating pairs of batches, stop the stack.

    A batch is `scale` copies of the 2,418 held-out emails (message ids made unique per copy), or its first
    `emails` emails (the fixed cost per batch: `--emails 101`).
    """
    stack = LocalStack(state_dir, workers=workers, airflow=True, out=say)
    stack.start()
    os.environ.update(stack.env)
    try:
        return _measure(stack, rounds, scale, workers, warmup, say, emails)
    finally:
        stack.stop()


def _measure(stack: LocalStack, rounds: int, scale: int, workers: int, warmup: int,
             say: Callable[[str], None], count: int | None = None) -> BenchReport:
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
    emails = [Email(f"{e.message_id}#{c}", e.text) for c in range(scale) for e in base]
    if count is not None:
        emails = [Email(f"{e.message_id}#{c}", e.text) for c in range(-(-count // len(base))) for e in base][:count]
    together = concurrent_scorer_rate(onnx_bytes, repeated([e.text for e in emails]), workers)
    report = BenchReport(len(emails), rounds, workers, raw_scorer_per_s=raw_scorer_rate(onnx_bytes, emails),
                         concurrent_scorers_per_s=together.per_s)
    say(f"[bench] raw scorer (ModelSession, 1 thread): {report.raw_scorer_per_s:.0f} emails/s alone; {workers} at "
        f"once: {together.per_s:.0f} emails/s ({together.per_cpu_s:.0f} per CPU second)")
    for w in range(warmup):  # first batches pay one-off costs (model load, first attestation): not counted
        for mode in MODES:
            run = _one_batch(store, owner, emails, mode)
            say(f"[bench] warm-up {w + 1}/{warmup} {mode:12} {run['end_to_end']:.1f} s (not counted)")
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            run = _one_batch(store, owner, emails, mode)
            report.runs[mode].append(run)
            say(f"[bench] round {r + 1}/{rounds} {mode:12} {len(emails)} emails in {run['end_to_end']:.1f} s "
                f"({len(emails) / run['end_to_end']:.0f} emails/s; "
                + ", ".join(f"{k} {run[k]:.1f} s" for k in ("submit", "pipeline", "results", "worker_busy")) + ")")
            if timeline := airflow_timeline(stack, _LAST_RUN):
                say(f"[bench]   where the pipeline's time went: {timeline}")
    return report


_LAST_RUN: dict[str, float | str] = {}  # the last batch's upload time, Airflow run id and pipeline seconds


def airflow_timeline(stack: LocalStack, run: dict[str, float | str]) -> str:
    """The batch's path through Airflow, step by step in seconds from the manifest's upload: the `cscore_intake` run
    queued (S3 event, queue, asset watcher) and its tasks, the batch's run queued, then each task instance
    queued/start/end ("(try n)" past the first). Read from the local stack's SQLite metadata database; empty when
    Airflow runs on another database."""
    conn = stack.airflow_env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    db = Path(conn.removeprefix("sqlite:///"))
    run_id = str(run.get("run_id", ""))
    if not run_id or not conn.startswith("sqlite:///") or not db.exists():
        return ""
    import sqlite3
    from datetime import datetime

    zero = float(run["uploaded_at"])

    def at(value: str | None) -> str:
        return f"{datetime.fromisoformat(value).timestamp() - zero:.1f}" if value else "?"

    def tasks(con: sqlite3.Connection, of_run: str) -> list[str]:
        rows = con.execute("SELECT task_id, queued_dttm, start_date, end_date, try_number FROM task_instance "
                           "WHERE run_id = ? ORDER BY start_date", (of_run,)).fetchall()
        return [f"{task} {at(q)}/{at(start)}/{at(end)}" + (f" (try {tries})" if tries and tries > 1 else "")
                for task, q, start, end, tries in rows]

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        queued = con.execute("SELECT queued_at FROM dag_run WHERE run_id = ?", (run_id,)).fetchone()
        # The intake run that started it: the latest one queued before it (the bench sends one batch at a time).
        intake = con.execute("SELECT run_id, queued_at FROM dag_run WHERE dag_id = 'cscore_intake' "
                             "AND queued_at <= ? ORDER BY queued_at DESC LIMIT 1",
                             (queued[0] if queued else "",)).fetchone()
        parts = [f"intake run queued {at(intake[1])}", *tasks(con, intake[0])] if intake else []
        parts += [f"run queued {at(queued[0]) if queued else '?'}", *tasks(con, run_id)]
    parts.append(f"status succeeded seen {float(run['pipeline']):.1f}")
    return ", ".join(parts)


def raw_scorer_rate(onnx_bytes: bytes, emails: list[Email]) -> float:
    """Emails/s of the worker's own scorer alone, in this process (at most 20,000 emails are timed)."""
    texts = [e.text for e in emails[:20_000]]
    session = ModelSession(onnx_bytes, threads=1)
    session.score(texts[:256])  # warm
    t0 = time.perf_counter()
    session.score(texts)
    return len(texts) / (time.perf_counter() - t0)


def _one_batch(store: ObjectStore, owner: Party, emails: list[Email], mode: str) -> dict[str, float]:
    """Seconds of one batch: owner phases, end to end, and the workers' phases summed over its shards."""
    t0 = time.monotonic()
    baseline = mode == "plaintext"
    model = find_model(store, "spam-filter-baseline" if baseline else "spam-filter", owner.trusted_providers())
    batch = submit_batch(emails, model, tenant=TENANT, owner=owner, store=store,
                         measurements=[code_measurement().hex()], plaintext_baseline=baseline)
    t1, uploaded_at = time.monotonic(), time.time()
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
    t3 = time.monotonic()
    if rows != len(emails):
        raise RuntimeError(f"{mode} batch {batch.batch_id}: expected {len(emails)} results, got {rows}")
    run = {"submit": t1 - t0, "pipeline": t2 - t1, "results": t3 - t2, "end_to_end": t3 - t0}
    _LAST_RUN.update(uploaded_at=uploaded_at, run_id=str(status.get("run_id", "")), pipeline=t2 - t1)
    return {**run, **worker_seconds(store, batch.batch_id)}


def worker_seconds(store: ObjectStore, batch_id: str, tenant: str = TENANT) -> dict[str, float]:
    """The workers' seconds per phase summed over the batch's shards ("worker.keys", ... from its result
    manifest), and their total ("worker_busy")."""
    shards = json.loads(store.get(f"results/{tenant}/{batch_id}/result-manifest.json"))["shards"]
    seconds = {f"worker.{phase}": sum(s.get("seconds", {}).get(phase, 0.0) for s in shards) for phase in WORKER_PHASES}
    return {**seconds, "worker_busy": sum(seconds.values())}


def _plain_results(store: ObjectStore, batch_id: str) -> pa.Table:
    manifest = json.loads(store.get(f"results/{TENANT}/{batch_id}/result-manifest.json"))
    return pa.concat_tables(pq.read_table(io.BytesIO(store.get(s["output_key"]))) for s in manifest["shards"])
