"""`cscore demo --example images`: an image classifier through the same confidential pipeline.

The provider trains a classifier on 60 % of scikit-learn's handwritten digits (shipped in the package) and
publishes it with an image contract; the owner writes the other 40 % as a folder of PNG and JPEG scans,
checks them per file (a PDF among them would be refused before upload), submits them; the DAG, attestation,
brokers, PME and receipts are the spam demo's. The owner verifies and decrypts the results, each naming its
file with a class and ten probabilities, and checks them bit for bit against plaintext scoring of the same
files with the same model (possible here because the demo plays both parties).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cscore.demo import TENANT, on_demo_stack, onboard_tenant, owner_trust, verified_results
from cscore.present import tee_line
from enclave.measurement import code_measurement
from enclave.runner import ContractSession
from infra.local.stack import LocalStack
from sdk.contracts import DIGITS_CONTRACT, DIGITS_TASK
from sdk.digits import digits_split, export_digits_onnx, model_inputs, train_digits_model, write_digit_files
from sdk.images import read_images
from sdk.models import find_model
from sdk.owner import submit_table
from sdk.party import Party
from sdk.provider import Offer, publish_model
from sdk.storage import ObjectStore

MODEL_NAME = "digits"


@dataclass(frozen=True)
class ImagesReport:
    batch_id: str
    files_scored: int
    accuracy: float  # classes against the digits' true labels
    bit_exact: bool  # every probability equals plaintext scoring of the same file, bit for bit
    wall_s: float
    images_per_s: float
    measurement: str
    audit_entries: int
    audit_findings: list[str]
    state_dir: str
    tee: str = ""
    results_at: str = ""
    classes: dict[str, int] = field(default_factory=dict)  # files per predicted class
    sample: list[dict[str, object]] = field(default_factory=list)  # a few files: name, class, top probability

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


PROVIDER = "vision"


def run_images_demo(state_dir: Path, *, workers: int = 2, keep: bool = False,
                    say: Callable[[str], None] = print) -> ImagesReport:
    """Start the stack, run the provider's and the owner's jobs on images, verify; stop unless `keep`."""
    return on_demo_stack(state_dir, _run, workers=workers, keep=keep, say=say)


def _run(stack: LocalStack, say: Callable[[str], None]) -> ImagesReport:
    from cscore.demo import _audit

    store = ObjectStore()
    split = digits_split()
    model = train_digits_model(split.train_x, split.train_y)
    onnx_bytes = export_digits_onnx(model)
    accuracy = float(np.mean(model.predict(model_inputs(split.test_x)) == split.test_y))
    vision = Party.from_env(PROVIDER)  # the marketplace's second provider: its own broker and signing key
    published = publish_model(onnx_bytes, MODEL_NAME, provider=vision, store=store,
                              allowed_measurements=[code_measurement().hex()],
                              offer=Offer(task=DIGITS_TASK, contract=DIGITS_CONTRACT,
                                          metrics={"held_out_accuracy": round(accuracy, 4)},
                                          price={"currency": "EUR", "per_1000_rows": 0.2},
                                          description="handwritten digits 0-9, 8x8 grayscale scans"))
    say(f"[provider {PROVIDER}] trained on {len(split.train_y)} digits, published {published.name}:"
        f"{published.version} ({published.digest[:23]}...) encrypted under its own broker, image contract signed")
    owner = Party.from_env("owner")
    onboard_tenant(owner, store, stack.state_dir)
    owner.trust_provider(vision.public_key())  # out of band, in real life
    listing = find_model(store, f"{published.name}:{published.version}", owner.trusted_providers())
    assert listing.card is not None  # find_model refuses a card it cannot parse
    folder = stack.state_dir / "owner" / "scans"
    truth = write_digit_files(split.test_x, split.test_y, folder)
    t0 = time.monotonic()
    table = read_images(folder, listing.card.contract, MODEL_NAME)
    say(f"[owner] {table.num_rows} scans in {folder} checked against the card's contract (format, bytes, pixels)")
    batch = submit_table(table, listing, tenant=TENANT, owner=owner, store=store,
                         measurements=[code_measurement().hex()])
    say(f"[owner] submitted batch {batch.batch_id}: {batch.rows} images, PME-encrypted, manifest signed")
    results = verified_results(store, batch.batch_id, owner, say)
    anchors, policy = owner_trust(accept_simulated=True)
    wall = time.monotonic() - t0
    say(f"[owner] {len(results.receipts)} receipts verified; results decrypted")
    local = ContractSession(onnx_bytes, listing.card.contract).results(
        table.column("file").combine_chunks(), {"image": table.column("image").to_pylist()}, None)
    position = {f: i for i, f in enumerate(results.table.column("file").to_pylist())}
    got = results.table.take([position[f] for f in table.column("file").to_pylist()])
    exact = (got.column("class").to_pylist() == local["class"].to_pylist() and
             np.array(got.column("probabilities").to_pylist(), np.float32).tobytes()
             == np.array(local["probabilities"].to_pylist(), np.float32).tobytes())
    entries, findings = _audit(stack.state_dir, store, anchors, policy, say)
    files, classes = got.column("file").to_pylist(), got.column("class").to_pylist()
    probabilities = got.column("probabilities").to_pylist()
    bucket = os.environ.get("CSCORE_BUCKET", "cscore")
    return ImagesReport(
        batch.batch_id, got.num_rows, float(np.mean([int(c) == truth[f] for f, c in zip(files, classes, strict=True)])),
        exact, wall, got.num_rows / wall, ",".join(results.measurements), entries, findings, str(stack.state_dir),
        tee=tee_line([str(r.claims.root) for r in results.receipts]),
        results_at=f"s3://{bucket}/results/{TENANT}/{batch.batch_id}/ (encrypted)",
        classes=dict(sorted(Counter(classes).items())),
        sample=[{"file": f, "class": c, "probability": round(max(p), 4), "true": truth[f]}
                for f, c, p in list(zip(files, classes, probabilities, strict=True))[:8]])
