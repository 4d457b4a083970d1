"""Faults as the data owner meets them: a batch id or tenant that does not exist, a key broker that is down.

One moto S3 (a real server over HTTP) for the module; the CLI runs as a subprocess with its own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dags.cscore_platform.steps import _whose_broker
from enclave.kbs_client import AttestedSession, BrokerUnreachable, KbsError
from infra.local import aws
from infra.local.stack import LocalStack
from infra.local.util import free_port
from sdk.party import Party

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    with LocalStack(tmp_path_factory.mktemp("faults-s3"), workers=0, airflow=False, brokers=False, sim_tee=False,
                    environ=environ, out=lambda _: None) as stack:
        yield stack


def _cscore(stack: LocalStack, *args: str, home: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "CSCORE_S3_ENDPOINT": stack.env["CSCORE_S3_ENDPOINT"], "CSCORE_BUCKET": stack.env["CSCORE_BUCKET"],
           "CSCORE_STATE_DIR": str(home / "state"), "CSCORE_OWNER_BROKER_URL": "https://127.0.0.1:9"}
    # A timeout here would mean it waited for a batch that will never come: the test fails.
    return subprocess.run([sys.executable, "-m", "cscore", "--state-dir", str(home / "state"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("batch, tenant", [("b-does-not-exist", "acme"), ("b-of-acme", "globex")],
                         ids=["unknown-batch", "other-tenant"])
def test_results_for_a_batch_that_does_not_exist_fail_at_once(s3_stack: LocalStack, tmp_path: Path, batch: str,
                                                              tenant: str) -> None:
    s3, _ = aws.clients(s3_stack.env["CSCORE_S3_ENDPOINT"])
    s3.put_object(Bucket="cscore", Key="incoming/acme/b-of-acme/manifest.jws", Body=b"signed manifest")
    result = _cscore(s3_stack, "owner", "results", batch, "--tenant", tenant, "--wait", "900", home=tmp_path)
    assert result.returncode != 0
    assert f"batch '{batch}': no such batch for tenant '{tenant}'" in result.stderr, result.stderr
    assert f"incoming/{tenant}/{batch}/manifest.jws is absent" in result.stderr
    assert "Traceback" not in result.stderr
    assert "still" not in result.stderr + result.stdout


class _NoEvidence:
    def get_evidence(self, report_data: bytes) -> object:
        raise AssertionError("no evidence is asked for before the broker answered")


def test_a_broker_that_is_down_is_named_for_the_worker() -> None:
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    session = AttestedSession(url, _NoEvidence(), party="owner", timeout_s=5)
    with pytest.raises(BrokerUnreachable) as caught:
        session.attest()
    message = str(caught.value)
    assert message.startswith(f"the owner's key broker at {url} did not answer (ConnectError")
    assert "check that it runs and that this worker can reach it, then resubmit the batch" in message
    assert isinstance(caught.value, KbsError)  # a shareable error: the platform sees this text
    assert caught.value.__context__ is None


def test_a_broker_that_is_down_is_named_for_the_owner(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "broker-admin-token").write_text("t" * 32)
    admin = Party(home=tmp_path / "owner", broker_url=url).broker()
    with pytest.raises(BrokerUnreachable, match=rf"^the owner's key broker at {url} did not answer \(ConnectError.*"
                                                r"check that it runs and that this machine can reach it, then run "
                                                r"the command again$"):
        admin.create_key("acme.b1.footer")


def test_the_platform_says_whose_broker_a_worker_could_not_reach() -> None:
    owner, provider = "https://kbs.owner.example:8443", "https://kbs.provider.example/"
    refusal = ("worker w1 failed attestation: BrokerUnreachable: the key broker at https://kbs.provider.example "
               "did not answer (ConnectError: refused); check that it runs")
    assert _whose_broker(refusal, owner, provider) == refusal.replace(
        "the key broker at https://kbs.provider.example ", f"the provider's key broker at {provider} ")
