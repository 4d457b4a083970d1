"""A local stack whose variables live in os.environ only while it runs, for module-scoped fixtures."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cscore.demo import TENANT, onboard_tenant
from enclave.measurement import code_measurement
from infra.local.netns import Network
from infra.local.stack import LocalStack
from sdk.emails import Email
from sdk.models import find_model
from sdk.owner import SubmittedBatch, register_tenant, submit_batch, wait_for_batch
from sdk.party import Party
from sdk.provider import publish_model
from sdk.storage import ObjectStore
from sdk.training import export_onnx, train_spam_model


@contextmanager
def running_stack(state: Path, *, drop: tuple[str, ...] = ("CSCORE_",), **options: Any) -> Iterator[LocalStack]:
    """Start a LocalStack with every part embedded (no variable of the caller's starting with one of `drop` leaks
    in), put its variables in os.environ, and on exit stop it and restore os.environ exactly."""
    saved = dict(os.environ)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    running = LocalStack(state, environ=clean, **options)
    running.start()
    os.environ.update(running.env)
    try:
        yield running
    finally:
        gc.collect()  # Celery results' __del__ talks to Redis: collect them while the stack still runs
        running.stop()
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def machines_stack(state: Path, net: Network, roles: Sequence[str], **options: Any) -> Iterator[LocalStack]:
    """running_stack with each of `roles` on its simulated machine of `net` (each as its own account, by default),
    none of the caller's CSCORE_ or AIRFLOW variables."""
    with running_stack(state, drop=("CSCORE_", "AIRFLOW"), machines={role: net[role] for role in roles}, lan=net.cidr,
                       **options) as running:
        yield running


@contextmanager
def storage_stack(state: Path) -> Iterator[LocalStack]:
    """moto and the key brokers only (no workers, no Airflow), quiet, with none of the caller's CSCORE_ or AIRFLOW
    variables; its variables stay in `.env` (os.environ is untouched)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    with LocalStack(state, workers=0, airflow=False, environ=environ, out=lambda _: None) as running:
        yield running


def toy_batch(state_dir: Path, tag: str, count: int, *, timeout: float,
              approve: Callable[[str, str], None] | None = None) -> tuple[list[Email], SubmittedBatch, dict[str, Any]]:
    """On the running stack: the provider publishes a spam model trained on four phrases, the owner onboards, trusts
    it and submits `count` emails (message ids `<m{i}@{tag}>`); returns the emails, the batch and its final status
    (waited for up to `timeout` s). `approve(tenant, thumbprint)` is the platform operator approving the owner's
    registration (default: this process, with the key in `<state>/platform`)."""
    store, owner, provider = ObjectStore(), Party.from_env("owner"), Party.from_env("provider")
    texts = ["win money now", "free prize claim today", "meeting at noon", "lunch tomorrow?"] * 10
    model = export_onnx(train_spam_model(texts, [1, 1, 0, 0] * 10))
    published = publish_model(model, "spam-filter", provider=provider, store=store,
                              allowed_measurements=[code_measurement().hex()])
    if approve is None:
        onboard_tenant(owner, store, state_dir)
    else:
        approve(TENANT, register_tenant(owner, TENANT, store).thumbprint)
    owner.trust_provider(provider.public_key())
    emails = [Email(f"<m{i}@{tag}>", texts[i % len(texts)] + f" #{i}") for i in range(count)]
    listing = find_model(store, f"spam-filter:{published.version}", owner.trusted_providers())
    batch = submit_batch(emails, listing, tenant=TENANT, owner=owner, store=store,
                         measurements=[code_measurement().hex()])
    return emails, batch, wait_for_batch(store, TENANT, batch.batch_id, timeout=timeout)


def approve_as_platform(stack: LocalStack) -> Callable[[str, str], None]:
    """toy_batch's `approve`: the operator's `cscore platform approve-tenant`, run as the platform's account on
    its machine (LocalStack.run_as) with the approval key in the platform's own folder; the owner hands it
    only the thumbprint, as in real life (no folder shared with the owner's process)."""
    def approve(tenant: str, thumbprint: str) -> None:
        home = stack.state_dir / "platform"
        done = stack.run_as("platform", [sys.executable, "-m", "cscore", "--state-dir", str(home), "platform",
                                         "approve-tenant", tenant, "--thumbprint", thumbprint, "--key-home", str(home)])
        if done.returncode != 0:
            raise AssertionError(f"approve-tenant as the platform failed ({done.returncode}): {done.stderr[-2000:]}")
    return approve
