"""The platform changes the worker's environment or start-up hooks: the worker refuses, or its measurement moves.

Issue 8, item 6: a ``.pth`` hook added to a worker's environment dumped plaintext while the measurement
stayed the same and both brokers released their keys. Here each way of changing what the interpreter
runs at start-up is tried for real (a separate interpreter, a real Celery worker process): variables
that change start-up make the worker exit before it serves anything, naming the variable; hooks that
live on disk (``.pth`` files, ``sitecustomize``, a module shadowing a distribution) change the
measurement, so evidence from such a worker fails a policy pinned to the honest measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation import Policy, TrustAnchors, appraise, verify_evidence
from attestation.errors import AppraisalError
from enclave.measurement import code_measurement
from enclave.tee import SimulatedSnpProvider

pytestmark = pytest.mark.timeout(240)

# argv: site directories to add (as site.addsitedir does), or "front:DIR" for a path entry searched first.
MEASURE = ("import site, sys; [sys.path.insert(0, d[6:]) if d.startswith('front:') else site.addsitedir(d) "
           "for d in sys.argv[1:]]; from enclave.measurement import code_measurement; print(code_measurement().hex())")
HOOK = "import pathlib; pathlib.Path({marker!r}).write_text('plaintext emails would go here')\n"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_", "CSCORE_"))}


def _measure_in_fresh_interpreter(cwd: Path, *site_dirs: Path | str) -> bytes:
    """The measurement as a new worker interpreter with these extra site directories computes it."""
    out = subprocess.run([sys.executable, "-P", "-c", MEASURE, *map(str, site_dirs)], cwd=cwd, env=_clean_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    return bytes.fromhex(out.stdout.strip())


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from attestation.simulated import create_simulated_firmware

    path = tmp_path_factory.mktemp("sim-tee")
    create_simulated_firmware(path)
    return path


def _refused_by_honest_policy(measurement: bytes, sim_dir: Path) -> AppraisalError:
    """Evidence of a worker with this measurement, appraised by a policy pinned to the honest one."""
    report_data = bytes(64)
    evidence = SimulatedSnpProvider(sim_dir, measurement).get_evidence(report_data)
    claims = verify_evidence(evidence, TrustAnchors.from_dir(sim_dir), datetime.now(UTC))
    policy = Policy.from_dict({"allowed_measurements": [code_measurement().hex()],
                               "allowed_roots": ["simulated"]})
    with pytest.raises(AppraisalError) as refused:
        appraise(claims, policy, report_data=report_data)
    return refused.value


def test_a_pth_hook_changes_the_measurement_and_the_policy_refuses_it(tmp_path: Path, sim_dir: Path) -> None:
    honest_dir, hooked_dir = tmp_path / "honest-site", tmp_path / "hooked-site"
    honest_dir.mkdir()
    hooked_dir.mkdir()
    marker = tmp_path / "dumped.txt"
    (hooked_dir / "zz-telemetry.pth").write_text(HOOK.format(marker=str(marker)))

    honest = _measure_in_fresh_interpreter(tmp_path, honest_dir)
    hooked = _measure_in_fresh_interpreter(tmp_path, hooked_dir)

    assert marker.exists()  # the hook really ran in the hooked interpreter ...
    assert honest == code_measurement()  # ... an extra, empty site dir changes nothing (and any process agrees)
    assert hooked != honest  # ... but the hooked interpreter's measurement moved
    assert _refused_by_honest_policy(hooked, sim_dir).field == "measurement"
    # The honest worker's evidence still passes the same policy.
    evidence = SimulatedSnpProvider(sim_dir, honest).get_evidence(bytes(64))
    claims = verify_evidence(evidence, TrustAnchors.from_dir(sim_dir), datetime.now(UTC))
    policy = Policy.from_dict({"allowed_measurements": [honest.hex()], "allowed_roots": ["simulated"]})
    appraise(claims, policy, report_data=bytes(64))


def test_sitecustomize_and_a_shadowing_module_change_the_measurement(tmp_path: Path) -> None:
    custom, shadow = tmp_path / "custom-site", tmp_path / "shadow-site"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text("import os\n")
    (shadow / "joserfc").mkdir(parents=True)  # shadows the installed JOSE library the worker imports
    (shadow / "joserfc" / "__init__.py").write_text("")
    honest = code_measurement()
    assert _measure_in_fresh_interpreter(tmp_path, custom) != honest
    assert _measure_in_fresh_interpreter(tmp_path, shadow) == honest  # searched last: never imported
    assert _measure_in_fresh_interpreter(tmp_path, f"front:{shadow}") != honest  # searched first: shadows


WORKER = [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker", "--pool=solo", "--loglevel=INFO",
          "-n", "h11-env-test@%h"]


def _start_worker(cwd: Path, env: dict[str, str], *, safe_path: bool = True) -> subprocess.Popen[str]:
    argv = [WORKER[0], "-P", *WORKER[1:]] if safe_path else WORKER
    env = {**env, "CSCORE_CELERY_BROKER_URL": "memory://", "CSCORE_CELERY_RESULT_BACKEND": "cache+memory://"}
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("variable", ["PYTHONPATH", "LD_PRELOAD"])
def test_a_worker_started_with_a_startup_variable_refuses_to_run(tmp_path: Path, variable: str) -> None:
    marker = tmp_path / "dumped.txt"
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK.format(marker=str(marker)))
    value = str(hook_dir) if variable == "PYTHONPATH" else str(tmp_path / "absent-preload.so")
    worker = _start_worker(tmp_path, {**_clean_env(), variable: value})
    output, _ = worker.communicate(timeout=180)
    assert worker.returncode == 78, output
    assert f"the worker refuses to start: {variable} is set" in output
    assert " ready." not in output  # never consumed a message
    assert value not in output.split("refuses to start")[-1]  # the refusal names the variable, not its value


def test_a_worker_started_without_safe_path_refuses_to_run(tmp_path: Path) -> None:
    worker = _start_worker(tmp_path, _clean_env(), safe_path=False)
    output, _ = worker.communicate(timeout=180)
    assert worker.returncode == 78, output
    assert "without safe path (PYTHONSAFEPATH off)" in output


def _measured_configuration(tmp_path: Path) -> dict[str, str]:
    """A worker configuration and simulated firmware: what every worker needs before it starts."""
    from attestation.simulated import create_simulated_firmware
    from wire.worker_config import BrokerIdentity, WorkerConfig

    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    card_key = {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}
    config = WorkerConfig("simulated-sev-snp", (BrokerIdentity("owner", "https://127.0.0.1:1", ca),),
                          (BrokerIdentity("provider", "https://127.0.0.1:2", ca, (card_key,)),))
    path = tmp_path / "worker-config.json"
    path.write_text(json.dumps(config.to_json()))
    create_simulated_firmware(tmp_path / "sim-tee")
    return {"CSCORE_WORKER_CONFIG": str(path), "CSCORE_SIM_TEE_DIR": str(tmp_path / "sim-tee")}


def test_the_honest_start_up_reaches_ready(tmp_path: Path) -> None:
    worker = _start_worker(tmp_path, {**_clean_env(), **_measured_configuration(tmp_path), "PYTHONUNBUFFERED": "1"})
    try:
        assert worker.stdout is not None
        for line in worker.stdout:  # ends if the worker exits (a refusal would)
            if " ready." in line:
                break
        else:
            pytest.fail(f"the worker exited with {worker.wait()} before it was ready")
    finally:
        worker.terminate()
        worker.wait(timeout=60)


@pytest.mark.parametrize("tamper", ["missing", "unknown-field", "http-broker"])
def test_a_worker_without_a_valid_measured_configuration_refuses_to_run(tmp_path: Path, tamper: str) -> None:
    env = {**_clean_env(), **_measured_configuration(tmp_path)}
    path = Path(env["CSCORE_WORKER_CONFIG"])
    doc = json.loads(path.read_text())
    if tamper == "missing":
        del env["CSCORE_WORKER_CONFIG"]
    elif tamper == "unknown-field":  # a setting the document's type does not define is never silently ignored
        path.write_text(json.dumps({**doc, "extra_owner_brokers": ["https://platform.example"]}))
    else:  # a broker reached without TLS could be anyone
        doc["owners"][0]["url"] = "http://127.0.0.1:1"
        path.write_text(json.dumps(doc))
    worker = _start_worker(tmp_path, env)
    output, _ = worker.communicate(timeout=180)
    assert worker.returncode != 0, output
    assert "cscore worker refuses to start" in output and " ready." not in output
    expected = {"missing": "CSCORE_WORKER_CONFIG is not set", "unknown-field": "extra_owner_brokers",
                "http-broker": "an https:// URL"}[tamper]
    assert expected in output
