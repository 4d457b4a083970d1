"""A local stack stopped and started again on the same state dir: its own moto comes back with an empty bucket and a
queue at a new URL, so what Airflow kept of the last run must not hold batches back, and the demo starts fresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.local.stack import LocalStack
from sdk.broker_admin import BrokerAdmin
from tests.stacks import running_stack, toy_batch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_a_restarted_stack_scores_at_once(tmp_path: Path) -> None:
    """Before: the intake DAG stayed serialized with the first run's queue URL until the DAG processor re-read its
    unchanged file (MIN_FILE_PROCESS_INTERVAL, 600 s), so the second run's batch waited 10 minutes."""
    state = tmp_path / "stack"
    for run in ("first", "second"):
        with running_stack(state, workers=1, airflow=True):
            _, batch, status = toy_batch(state, run, 8, timeout=240)
            assert status["state"] == "succeeded", (run, status.get("reason"))
    assert (state / "airflow" / "airflow.db.previous").is_file()  # the first run's metadata, kept aside


def test_a_fresh_stack_sets_an_earlier_runs_state_aside(tmp_path: Path) -> None:
    """`fresh` (the demo's): the earlier run's brokers, logs and audit go to `<state>.previous`, whole; the new run's
    key broker keeps no decision of the old one (the old bucket, in memory, is gone)."""
    state = tmp_path / "demo"
    with running_stack(state, workers=0, airflow=False) as first:
        _owner_admin(first).create_key("earlier-run")
        earlier = _owner_admin(first).decisions()
    with running_stack(state, workers=0, airflow=False, fresh=True) as second:
        assert "earlier-run" not in {e["key_id"] for e in _owner_admin(second).decisions()}
    moved = {p.name for p in (tmp_path / "demo.previous").iterdir()}
    assert {"brokers", "owner", "logs", "stack.env"} <= moved and "stack.lock" not in moved
    assert "earlier-run" in {e["key_id"] for e in earlier}


def _owner_admin(stack: LocalStack) -> BrokerAdmin:
    token = (stack.state_dir / "owner" / "broker-admin-token").read_text()
    return BrokerAdmin(stack.env["CSCORE_OWNER_BROKER_URL"], token, ca_bundle=stack.env["CSCORE_BROKER_CA"])
