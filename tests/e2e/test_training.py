"""Confidential training on real parts: the owner's training manifest's S3 event -> asset watcher ->
cscore_train -> attested Celery worker -> enclave-signed receipt and tuned card; `cscore owner train` waits,
verifies and prints the held-out metrics.

Tests in this module share one stack and run in order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cscore.demo import TENANT, onboard_tenant, owner_trust
from enclave.measurement import code_measurement
from enclave.scoring import ModelSession
from enclave.training import train
from infra.local.stack import LocalStack
from sdk.corpus import CorpusEmail
from sdk.emails import Email, email_text, read_emails
from sdk.owner import submit_batch, wait_for_batch
from sdk.owner_training import held_out as held_out_split
from sdk.owner_training import read_labelled, tuned_models
from sdk.party import Party
from sdk.provider import publish_recipe
from sdk.results import fetch_results
from sdk.storage import ObjectStore
from wire.recipe import Recipe

pytestmark = pytest.mark.e2e
WAIT_S = 600.0
RECIPE = Recipe(token_pattern=r"[a-zA-Z0-9_]{2,}", max_features=5000, C=100.0, max_iter=2000, seed=0)
_state: dict[str, Any] = {}


def _cscore(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cscore", "--state-dir", str(stack.state_dir), *args],
                          env=stack.child_env(), capture_output=True, text=True, timeout=WAIT_S + 120)


def _labelled_folders(emails: list[CorpusEmail], root: Path, per_class: int) -> Path:
    """The owner's mail as `cscore owner train` takes it: spam/ and ham/, one .eml file per email."""
    for label, folder in ((1, "spam"), (0, "ham")):
        (root / folder).mkdir(parents=True)
        for e in [e for e in emails if e.label == label][:per_class]:
            (root / folder / f"{e.message_id.replace('/', '_')}.eml").write_bytes(e.raw)
    return root


def test_owner_train_is_woken_by_its_manifest_and_prints_verified_metrics(
        stack: LocalStack, corpus: tuple[list[CorpusEmail], list[CorpusEmail]], tmp_path: Path) -> None:
    store = ObjectStore()
    provider, owner = Party.from_env("provider"), Party.from_env("owner")
    recipe = publish_recipe(RECIPE, "spam-recipe", provider=provider, store=store,
                            allowed_measurements=[code_measurement().hex()])
    onboard_tenant(owner, store, stack.state_dir)
    owner.trust_provider(provider.public_key())
    _, held_out = corpus
    mail = _labelled_folders(held_out, tmp_path / "mail", per_class=150)
    run = _cscore(stack, "owner", "train", str(mail), "--recipe", f"spam-recipe:{recipe.version}",
                  "--model-name", "spam-filter-tuned", "--tenant", TENANT, "--accept-simulated", "--json",
                  "--wait", str(WAIT_S))
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["model"] == f"{TENANT}/spam-filter-tuned:1"
    assert outcome["measurement"] == code_measurement().hex()
    assert outcome["train_rows"] + outcome["holdout_rows"] == 300 and outcome["holdout_rows"] >= 40
    assert 0.8 <= outcome["f1"] <= 1.0 and outcome["digest"].startswith("sha256:")
    # Woken by the S3 event through the training queue's asset watcher (Airflow names such runs
    # asset_triggered__...), not triggered by hand.
    status = json.loads(store.get(f"status/{TENANT}/{outcome['job_id']}.json"))
    assert status["state"] == "succeeded" and status["run_id"].startswith("asset_triggered__"), status
    assert not {"f1", "precision", "metrics"} & set(status)
    _state.update(outcome=outcome, recipe=recipe, mail=mail)


def test_the_tuned_model_is_listed_for_its_owner_only(stack: LocalStack, tmp_path: Path) -> None:
    listed = _cscore(stack, "models", "--tenant", TENANT, "--accept-simulated", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    mine = {m["model"]: m for m in json.loads(listed.stdout.strip().splitlines()[-1])}
    tuned = mine[f"{TENANT}/spam-filter-tuned:1"]
    assert tuned["trusted"] and tuned["digest"] == _state["outcome"]["digest"]
    assert tuned["metrics"]["f1"] == _state["outcome"]["f1"] and tuned["signer"].startswith("enclave ")
    public = _cscore(stack, "models", "--json")
    assert f"{TENANT}/spam-filter-tuned:1" not in {m["model"] for m in json.loads(public.stdout.splitlines()[-1])}
    # Another owner (its own signing key) looking under this tenant: the job is not its own, nothing listed.
    rival = dataclasses.replace(Party.from_env("owner"), home=tmp_path / "rival-owner")
    anchors, policy = owner_trust(accept_simulated=True)
    assert tuned_models(ObjectStore(), TENANT, owner=rival, anchors=anchors, policy=policy) == []


def test_owner_scores_with_its_tuned_model_bit_exact_against_plaintext(
        stack: LocalStack, corpus: tuple[list[CorpusEmail], list[CorpusEmail]], tmp_path: Path) -> None:
    _, held_out = corpus
    batch_dir = tmp_path / "batch"
    batch_dir.mkdir()
    for e in held_out[-200:]:
        (batch_dir / f"{e.message_id.replace('/', '_')}.eml").write_bytes(e.raw)
    run = _cscore(stack, "owner", "submit", str(batch_dir), "--model", f"{TENANT}/spam-filter-tuned:1",
                  "--tenant", TENANT, "--accept-simulated")
    assert run.returncode == 0, run.stderr[-3000:]
    batch_id = re.search(r"submitted batch (\S+):", run.stdout).group(1)  # type: ignore[union-attr]
    status = wait_for_batch(ObjectStore(), TENANT, batch_id, timeout=WAIT_S)
    assert status["state"] == "succeeded", status
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, batch_id, owner=Party.from_env("owner"), store=ObjectStore(), anchors=anchors,
                            policy=policy)
    # The same recipe trained in plaintext on the same rows and split: the same bytes, the same scores.
    labelled = read_labelled(_state["mail"])
    texts, labels = [e.text for e, _ in labelled], [y for _, y in labelled]
    plain = train(RECIPE, texts, labels, held_out_split([e.message_id for e, _ in labelled], 0.3, 0)).onnx_bytes
    assert "sha256:" + hashlib.sha256(plain).hexdigest() == _state["outcome"]["digest"]
    emails = {e.message_id: e.text for e in read_emails(batch_dir)}
    ids = results.table.column("message_id").to_pylist()
    expected, _ = ModelSession(plain).score([emails[i] for i in ids])
    got = results.table.column("spam_probability").to_numpy().astype(np.float32)
    assert got.tobytes() == expected.astype(np.float32).tobytes()
    assert {r.payload["model"]["name"] for r in results.receipts} == {f"{TENANT}/spam-filter-tuned"}


def test_another_tenant_naming_the_tuned_model_is_refused_by_the_enclave(
        stack: LocalStack, corpus: tuple[list[CorpusEmail], list[CorpusEmail]], tmp_path: Path) -> None:
    """Tenant `rival` (another owner's key) copies acme's public card reference into its own manifest."""
    store = ObjectStore()
    owner = Party.from_env("owner")
    rival = dataclasses.replace(owner, home=tmp_path / "rival-owner")
    rival.home.mkdir()
    # Its own signing key; the stack has one owner broker, so the rival is a tenant of the same broker.
    shutil.copy(owner.home / "broker-admin-token", rival.home / "broker-admin-token")
    onboard_tenant(rival, store, stack.state_dir, tenant="rival")
    rival.trust_provider(Party.from_env("provider").public_key())  # its submit grants only the pinned card keys
    anchors, policy = owner_trust(accept_simulated=True)
    acme = tuned_models(store, TENANT, owner=Party.from_env("owner"), anchors=anchors, policy=policy)[0]
    _, held_out = corpus
    copied = dataclasses.replace(acme, owner_keys=())  # rival's broker grant cannot name acme's share
    batch = submit_batch([Email(e.message_id, email_text(e.raw)) for e in held_out[:50]], copied, tenant="rival",
                         owner=rival, store=store, measurements=[code_measurement().hex()])
    status = wait_for_batch(store, "rival", batch.batch_id, timeout=WAIT_S)
    assert status["state"] == "failed"
    assert "belongs to tenant 'acme'" in status["reason"] and "scores only its owner's batches" in status["reason"]


def test_the_audit_tells_the_training_job_and_finds_every_release_allowed(stack: LocalStack) -> None:
    """Training releases, the receipt and the tuned model's lineage are in the log; the rival's refused batch
    is a recorded failure, not an unexplained release."""
    assert _cscore(stack, "audit", "sync", "--state-dir", str(stack.state_dir)).returncode == 0
    job = _state["outcome"]["job_id"]
    shown = _cscore(stack, "audit", "show", job, "--state-dir", str(stack.state_dir), "--json")
    assert shown.returncode == 0, (shown.stdout[-3000:], shown.stderr[-3000:])
    report = json.loads(shown.stdout)
    assert report["verdict"]["holds"] and report["verdict"]["receipts"] == {"verified": 1, "total": 1}
    training = next(s for s in report["sections"] if s["title"] == "Training and lineage")["rows"]
    assert f"F1 {_state['outcome']['f1']}" in training[-1]["cells"]["detail"]
    assert f"lineage: job {job}" in training[0]["cells"]["detail"]
    keys = {r["cells"]["key"] for r in next(s for s in report["sections"] if s["title"] == "Key releases")["rows"]}
    assert {"recipe.spam-recipe", f"{TENANT}.{job}.train", f"{TENANT}.{job}.share"} <= keys
    verified = _cscore(stack, "audit", "verify", "--state-dir", str(stack.state_dir))
    assert verified.returncode == 0, verified.stdout[-3000:]
