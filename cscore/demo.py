"""`cscore demo`: the whole confidential pipeline on the embedded default, end to end.

The provider trains on 60 % of the SpamAssassin corpus and publishes; the owner submits the other 40 %;
the S3 event wakes the DAG; workers attest, score and write encrypted results; the owner verifies and
decrypts them and measures precision and recall against the corpus labels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from attestation import Policy, TrustAnchors
from cscore.present import confusion, histogram, label_rule, tee_line
from enclave.measurement import code_measurement
from infra.local.stack import LocalStack
from sdk.corpus import CorpusEmail, fetch_corpus, load_corpus, split_corpus
from sdk.emails import Email, email_text
from sdk.models import find_model
from sdk.owner import register_tenant, submit_batch, wait_for_batch
from sdk.party import Party
from sdk.platform import approve_tenant, approver_key
from sdk.platform_text import advice, shown
from sdk.provider import publish_model
from sdk.results import VerifiedResults, fetch_results
from sdk.results import owner_trust as sdk_owner_trust
from sdk.storage import ObjectStore
from sdk.training import export_onnx, train_spam_model

TENANT = "acme"
MODEL_NAME = "spam-filter"
T = TypeVar("T")


@dataclass(frozen=True)
class DemoReport:
    batch_id: str
    emails_scored: int
    spam_found: int
    precision: float
    recall: float
    wall_s: float
    emails_per_s: float
    measurement: str
    audit_entries: int
    audit_findings: list[str]
    s3_endpoint: str
    airflow_url: str
    state_dir: str
    tee: str = ""
    label_rule: str = ""
    results_at: str = ""
    confusion: dict[str, int] = field(default_factory=dict)  # tp, fp, fn, tn against the corpus labels
    histogram: list[int] = field(default_factory=list)  # emails per spam-probability bin [i/10, (i+1)/10)
    probabilities: list[float] = field(default_factory=list, repr=False)  # for --plot; not in as_dict

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("probabilities")
        return data


def corpus_split() -> tuple[list[CorpusEmail], list[CorpusEmail]]:
    """The provider's 60 % and the owner's 40 % of the SpamAssassin corpus (deterministic)."""
    return split_corpus(load_corpus(fetch_corpus()), train_fraction=0.6)


def provider_publishes(train: list[CorpusEmail], store: ObjectStore, say: Callable[[str], None]) -> str:
    """Train, export to ONNX and publish; returns the published `name:version`."""
    t0 = time.monotonic()
    pipeline = train_spam_model([email_text(e.raw) for e in train], [e.label for e in train])
    onnx_bytes = export_onnx(pipeline)
    say(f"[provider] trained on {len(train)} emails, ONNX {len(onnx_bytes) / 1e6:.1f} MB "
        f"({time.monotonic() - t0:.1f} s)")
    published = publish_model(onnx_bytes, MODEL_NAME, provider=Party.from_env("provider"), store=store,
                              allowed_measurements=[code_measurement().hex()])
    say(f"[provider] published {published.name}:{published.version} ({published.digest[:23]}...) "
        "encrypted; its key stays in the provider's broker")
    return f"{published.name}:{published.version}"


def onboard_tenant(owner: Party, store: ObjectStore, state_dir: Path, tenant: str = TENANT) -> None:
    """The owner asks to register its tenant; the platform operator approves the key thumbprint the owner
    told it (out of band in real life: here one process plays both)."""
    request = register_tenant(owner, tenant, store)
    approve_tenant(store, tenant, request.thumbprint, approver_key(state_dir / "platform"))


def owner_emails(held_out: list[CorpusEmail]) -> list[Email]:
    return [Email(message_id=e.message_id, text=email_text(e.raw)) for e in held_out]


def verified_results(store: ObjectStore, batch_id: str, owner: Party, say: Callable[[str], None]) -> VerifiedResults:
    """Wait for the demo tenant's batch, then fetch, verify and decrypt its results as the owner (the simulated TEE
    accepted). Raises RuntimeError with the batch's reason and what to do next when it failed."""
    status = wait_for_batch(store, TENANT, batch_id, progress=lambda s: say(f"[owner] batch is {s}"))
    if status["state"] != "succeeded":
        reason = shown(status.get("reason"))  # the platform wrote it: no escape reaches the terminal
        raise RuntimeError(f"batch {batch_id} failed: {reason}\n{advice(reason, batch_id, TENANT)}")
    anchors, policy = owner_trust(accept_simulated=True)
    return fetch_results(TENANT, batch_id, owner=owner, store=store, anchors=anchors, policy=policy)


def owner_trust(*, accept_simulated: bool) -> tuple[TrustAnchors, Policy]:
    """`sdk.results.owner_trust` for the worker code of this checkout (the demo's owner audited it itself)."""
    return sdk_owner_trust(accept_simulated=accept_simulated, measurements=[code_measurement().hex()])


def score_report(results: VerifiedResults, labels: dict[str, int]) -> tuple[dict[str, int], float, float]:
    """(confusion counts, precision, recall) of the decrypted labels against the corpus labels."""
    ids = results.table.column("message_id").to_pylist()
    counts = confusion(results.table.column("label").to_pylist(), [labels[i] for i in ids])
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return counts, tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def results_next_step(batch_id: str, state_dir: str, *, keep: bool, demo: str = "cscore demo",
                      out: str = "FILE") -> str:
    """How to fetch the demo's results: with `--keep` the stack still holds them; without it they went with it
    (moto keeps nothing across restarts), so a restarted stack would not know the batch. `demo` is the command
    that ran (the images demo: `cscore demo --example images`)."""
    fetch = (f"`cscore owner results {batch_id} --tenant {TENANT} --accept-simulated --out {out} "
             f"--state-dir {state_dir}`")
    if keep:
        return f"{fetch} decrypts them; `cscore stack stop --state-dir {state_dir}` when done"
    return f"gone with the stopped stack: run `{demo} --keep`, then {fetch} decrypts them"


def run_demo(state_dir: Path, *, workers: int = 2, keep: bool = False,
             say: Callable[[str], None] = print) -> DemoReport:
    """Start the stack, run both parties' jobs, verify and measure; stop the stack unless `keep`."""
    return on_demo_stack(state_dir, _run_parties, workers=workers, keep=keep, say=say)


def on_demo_stack(state_dir: Path, run: Callable[[LocalStack, Callable[[str], None]], T], *, workers: int,
                  keep: bool, say: Callable[[str], None]) -> T:
    """`run(stack, say)` on a started local stack (with Airflow) whose variables are in this process's
    environment; the stack is stopped afterwards unless `keep`."""
    stack = LocalStack(state_dir, workers=workers, airflow=True, out=say, fresh=True)  # each demo its own run
    stack.start()
    os.environ.update(stack.env)
    # Said now, while they answer: without --keep they stop with the stack at the end.
    say(f"[stack] Airflow UI {stack.env.get('CSCORE_AIRFLOW_URL', '(none)')}, S3 endpoint "
        f"{stack.env.get('CSCORE_S3_ENDPOINT', '(AWS)')}: up while the demo runs"
        + (" and after it (--keep)" if keep else "; they stop with it (--keep leaves them up)"))
    try:
        return run(stack, say)
    finally:
        if not keep:
            stack.stop()


def _audit(state_dir: Path, store: ObjectStore, anchors: TrustAnchors, policy: Policy,
           say: Callable[[str], None]) -> tuple[int, list[str]]:
    """As the auditor: sync the transparency log from both brokers and the bucket, then verify it."""
    from audit.cli import open_log, sync_from_env, witnesses
    from audit.verify import verify_audit

    report = sync_from_env(state_dir)
    log = open_log(None, state_dir)
    findings = verify_audit(log, store, anchors, policy, witnesses=witnesses(state_dir))
    errors = [f"{f.check}: {f.message}" for f in findings if f.severity == "error"]
    say(f"[auditor] {report.summary()}; verify: {'all holds' if not errors else f'{len(errors)} problem(s)'}")
    return len(log.entries()), errors


def _run_parties(stack: LocalStack, say: Callable[[str], None]) -> DemoReport:
    store = ObjectStore()
    train, held_out = corpus_split()
    model_ref = provider_publishes(train, store, say)
    owner = Party.from_env("owner")
    onboard_tenant(owner, store, stack.state_dir)
    emails = owner_emails(held_out)
    t0 = time.monotonic()
    owner.trust_provider(Party.from_env("provider").public_key())  # out of band, in real life
    batch = submit_batch(emails, find_model(store, model_ref, owner.trusted_providers()), tenant=TENANT,
                         owner=owner, store=store,
                         measurements=[code_measurement().hex()])
    say(f"[owner] submitted batch {batch.batch_id}: {batch.rows} emails, PME-encrypted, manifest signed")
    results = verified_results(store, batch.batch_id, owner, say)
    anchors, policy = owner_trust(accept_simulated=True)
    wall = time.monotonic() - t0
    counts, precision, recall = score_report(results, {e.message_id: e.label for e in held_out})
    say(f"[owner] {len(results.receipts)} receipts verified; results decrypted")
    entries, findings = _audit(stack.state_dir, store, anchors, policy, say)
    probabilities = results.table.column("spam_probability").to_pylist()
    labels = results.table.column("label").to_pylist()
    bucket = os.environ.get("CSCORE_BUCKET", "cscore")
    return DemoReport(batch.batch_id, results.table.num_rows, counts["tp"] + counts["fp"], precision, recall, wall,
                      results.table.num_rows / wall, ",".join(results.measurements), entries, findings,
                      stack.env.get("CSCORE_S3_ENDPOINT", ""), stack.env.get("CSCORE_AIRFLOW_URL", ""),
                      str(stack.state_dir), tee=tee_line([str(r.claims.root) for r in results.receipts]),
                      label_rule=label_rule(probabilities, labels),
                      results_at=f"s3://{bucket}/results/{TENANT}/{batch.batch_id}/ (encrypted)",
                      confusion=counts, histogram=histogram(probabilities), probabilities=probabilities)
