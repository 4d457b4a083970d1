"""Load test: many simulated enclaves attest to one key broker and unwrap keys at once.

    .venv/bin/python bench/broker_load.py --workers 16 --unwraps 20 [--tls]

Starts its own broker process on a free loopback port (state in a temporary folder), prints p50/p99
latency per operation and overall requests/s. With --tls the broker serves HTTPS with a certificate
from a fresh local CA (keybroker.tls) and the clients verify it. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attestation.simulated import create_simulated_firmware  # noqa: E402
from enclave.kbs_client import AttestedSession  # noqa: E402
from enclave.tee import SimulatedSnpProvider  # noqa: E402
from keybroker.tls import TlsFiles, ensure_local_tls  # noqa: E402
from sdk.broker_admin import BrokerAdmin  # noqa: E402

MEASUREMENT = bytes(range(48))
MODEL = "sha256:" + "ab" * 32


def start_broker(state: Path, tls: TlsFiles | None) -> tuple[subprocess.Popen[bytes], str]:
    """Run `python -m keybroker serve` with limits raised for load; wait for /healthz."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"name": "bench", "host": "127.0.0.1", "port": port, "db_path": str(state / "keys.sqlite"),
              "kek_path": str(state / "kek.hex"), "admin_token_path": str(state / "admin-token"),
              "trusted_roots_dir": str(state / "sim"), "accept_simulated": True, "token_ttl_s": 300,
              "rate_limit_rps": 1e6, "rate_limit_burst": 1_000_000, "log_level": "warning"}
    if tls is not None:
        config.update(tls_cert_path=str(tls.cert), tls_key_path=str(tls.key))
    (state / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, "-m", "keybroker", "serve", "--config", str(state / "config.json")],
                            cwd=REPO, stderr=(state / "broker.log").open("wb"), start_new_session=True)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(tls.ca_cert)) if tls else True
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5, verify=verify).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("broker did not become ready")


def one_worker(url: str, sim: Path, wrapped: bytes, unwraps: int, ca: Path | None) -> tuple[float, list[float]]:
    """Attest once, then unwrap `unwraps` times; returns (attest seconds, unwrap seconds each)."""
    session = AttestedSession(url, SimulatedSnpProvider(sim, MEASUREMENT), ca_bundle=ca)
    t0 = time.perf_counter()
    session.attest()
    attest_s = time.perf_counter() - t0
    times = []
    for _ in range(unwraps):
        t = time.perf_counter()
        session.unwrap("bench-data", wrapped, batch_id="bench-batch", model_digest=MODEL)
        times.append(time.perf_counter() - t)
    session.close()
    return attest_s, times


def pct(values: list[float], p: float) -> float:
    """Percentile in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    """Parse arguments, run the load, print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16, help="simulated enclaves running at once")
    parser.add_argument("--unwraps", type=int, default=20, help="unwraps per enclave after attesting")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a local CA certificate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        create_simulated_firmware(state / "sim")
        tls = ensure_local_tls(state / "ca", state, "bench") if args.tls else None
        ca = tls.ca_cert if tls else None
        proc, url = start_broker(state, tls)
        try:
            admin = BrokerAdmin(url, (state / "admin-token").read_text().strip(), ca_bundle=ca)
            admin.create_key("bench-data")
            admin.grant("bench-batch", MODEL, [MEASUREMENT.hex()], ["bench-data"])
            wrapped = admin.wrap("bench-data", os.urandom(16))
            started = time.perf_counter()
            with ThreadPoolExecutor(args.workers) as pool:
                results = list(pool.map(lambda _: one_worker(url, state / "sim", wrapped, args.unwraps, ca),
                                        range(args.workers)))
            elapsed = time.perf_counter() - started
            admin.close()
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    attests = [a for a, _ in results]
    unwraps = [u for _, us in results for u in us]
    requests = len(attests) * 2 + len(unwraps)  # auth + attest per worker, one request per unwrap
    print(f"workers={args.workers} unwraps/worker={args.unwraps} tls={args.tls} elapsed={elapsed:.2f}s")
    print(f"attest (auth+evidence+attest): p50={pct(attests, 50):.1f} ms p99={pct(attests, 99):.1f} ms")
    print(f"unwrap: p50={pct(unwraps, 50):.1f} ms p99={pct(unwraps, 99):.1f} ms "
          f"mean={1000 * statistics.fmean(unwraps):.1f} ms")
    print(f"throughput: {requests / elapsed:.0f} requests/s ({len(unwraps) / elapsed:.0f} unwraps/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
