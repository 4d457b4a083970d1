"""Peak memory and wall time of `cscore owner submit` as the batch grows (the real program, on a local stack).

    .venv/bin/python -m bench.owner_memory [--emails 2418,96720] [--format jsonl|parquet] [--state-dir DIR]
                                           [--pipeline [--workers 2]]

Starts moto and both key brokers (no Airflow, no workers: nothing is scored), publishes the spam model as
the provider, then for each size writes a JSON-lines input of that many emails (the corpus' held-out raw
messages repeated, each with its own id; or, with `--format parquet`, a Parquet file of their texts, which
skips MIME parsing: for a million emails on a small machine) and runs `python -m cscore owner submit` on it under
`/usr/bin/time -v`: peak resident memory (the whole process) and wall time, with emails/s. The submit
parses, checks and spools every email, then encrypts and uploads part by part (`sdk.owner.submit_spooled`).

With `--pipeline` the stack also runs Airflow and `--workers` Celery workers, and each batch goes all the way:
submit, the DAG scoring it (timed from the submit's end to the status `succeeded`), then `cscore owner results
--out` under `/usr/bin/time -v` (fetch, verify, decrypt); printed per batch with end to end emails/s, the pipeline's
rate over `--workers` raw scorers (the enclave's ModelSession, one thread) timed at once in this run, beside the
former figure (one scorer timed alone, times `--workers`; `cscore.scorers` says why both), the CPU seconds each part
of the stack used while the pipeline ran (and how many of the machine's cores the stack got: the machine may be
shared), and the workers' peak resident memory (VmHWM of each worker's processes, the largest; a worker runs every
batch, so it is the peak so far).

`--worker-cpus 1` pins the workers (and the raw scorers timed beside them) to those CPUs and everything else this
command starts (the stack's other parts, the owner's commands) to the rest: the pipeline on the workers' own cores,
as on confidential VMs of their own. It then prints how busy those CPUs were with other work (load this command does
not control: pin it away by hand, `taskset -a -p`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from cscore.bench import raw_scorer_rate, worker_seconds
from cscore.demo import TENANT, onboard_tenant
from cscore.scorers import ConcurrentRate, concurrent_scorer_rate, repeated
from enclave.measurement import code_measurement
from infra.local.stack import LocalStack
from sdk.corpus import default_cache_dir, fetch_corpus, load_corpus, split_corpus
from sdk.emails import Email, email_text
from sdk.owner import wait_for_batch
from sdk.party import Party
from sdk.provider import publish_model
from sdk.storage import ObjectStore
from sdk.training import export_onnx, train_spam_model

REPO = Path(__file__).resolve().parents[1]


def write_input(path: Path, raws: list[bytes], n: int) -> int:
    """JSON lines of `n` emails cycling through `raws`; returns the file's size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            raw = raws[i % len(raws)].decode("utf-8", "surrogateescape")
            out.write(json.dumps({"message_id": f"m{i:07d}", "raw": raw}) + "\n")
    return path.stat().st_size


def write_parquet(path: Path, texts: list[str], n: int) -> int:
    """A Parquet input (message_id, text) of `n` emails cycling through `texts`, 10,000 rows per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("message_id", pa.string()), ("text", pa.string())])) as writer:
        for start in range(0, n, 10_000):
            rows = range(start, min(n, start + 10_000))
            writer.write_table(pa.table({"message_id": [f"m{i:07d}" for i in rows],
                                         "text": [texts[i % len(texts)] for i in rows]}))
    return path.stat().st_size


def measured_submit(state_dir: Path, input_file: Path, measurement: str = "00" * 48) -> tuple[float, float, str]:
    """(peak RSS in MB, wall s, the command's last output line) of one `cscore owner submit`."""
    return _timed(["owner", "submit", str(input_file), "--model", "spam-filter:1", "--tenant", "acme",
                   "--measurement", measurement, "--json"], state_dir)


def _timed(cscore_args: list[str], state_dir: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, wall s, last stdout line) of `python -m cscore ...` under `/usr/bin/time -v`."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "cscore", "--state-dir", str(state_dir), *cscore_args]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"cscore {' '.join(cscore_args[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return peak_kb / 1024, wall, done.stdout.strip().splitlines()[-1]


def measured_results(state_dir: Path, batch_id: str, out: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, wall s, the command's last output line) of one `cscore owner results --out`."""
    return _timed(["owner", "results", batch_id, "--tenant", "acme", "--out", str(out), "--accept-simulated"],
                  state_dir)


def worker_peak_mb(stack: LocalStack) -> float:
    """The largest peak RSS (VmHWM) among the Celery workers' processes (each worker's main and pool child)."""
    import psutil

    peaks = [0]
    for name, pid in stack.pids().items():
        if name.startswith("celery-worker-"):
            leader = psutil.Process(pid)
            for proc in [leader, *leader.children(recursive=True)]:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peaks.append(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)))  # type: ignore[union-attr]
    return max(peaks) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", default="2418,96720", help="comma-separated batch sizes")
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl",
                        help="jsonl: raw messages (parsed as MIME); parquet: their texts (no parsing)")
    parser.add_argument("--state-dir", type=Path, help="stack state (default: a temporary folder)")
    parser.add_argument("--inputs", type=Path, help="where the inputs are written (default: the state dir)")
    parser.add_argument("--pipeline", action="store_true",
                        help="also Airflow and workers: score each batch and fetch its results (`owner results`)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers with --pipeline")
    parser.add_argument("--worker-cpus", type=_cpus, metavar="CPUS",
                        help="with --pipeline: comma-separated CPUs for the workers and the raw scorers alone")
    args = parser.parse_args(argv)
    if args.worker_cpus:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - args.worker_cpus)  # what this starts inherits it
    sizes = [int(s) for s in args.emails.split(",")]
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="cscore-owner-memory-"))
    inputs = args.inputs or state_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    train, held_out = split_corpus(load_corpus(fetch_corpus(default_cache_dir())), train_fraction=0.6, seed=0)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    workers = args.workers if args.pipeline else 0
    rows = []
    with LocalStack(state_dir, workers=workers, airflow=args.pipeline, environ=environ, out=lambda _: None) as stack:
        os.environ.update(stack.env)
        if args.worker_cpus:
            pin_workers(stack, args.worker_cpus)
        store, owner = ObjectStore(), Party.from_env("owner")
        onnx_bytes = export_onnx(train_spam_model([email_text(e.raw) for e in train], [e.label for e in train]))
        measurement = code_measurement().hex() if args.pipeline else "00" * 48
        publish_model(onnx_bytes, "spam-filter", provider=Party.from_env("provider"), store=store,
                      allowed_measurements=[measurement])
        owner.trust_provider(Party.from_env("provider").public_key())
        if args.pipeline:
            onboard_tenant(owner, store, stack.state_dir, TENANT)
        texts = [email_text(e.raw) for e in held_out]
        for n in sizes:
            path = inputs / f"emails-{n}.{args.format}"
            size = (write_input(path, [e.raw for e in held_out], n) if args.format == "jsonl" else
                    write_parquet(path, texts, n))
            print(f"[bench] {n} emails ({size / 1e6:.0f} MB {args.format}); load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            if args.pipeline:  # before the submit: the pipeline starts as the submit ends, and is timed from there
                with pinned(args.worker_cpus):
                    alone = raw_scorer_rate(onnx_bytes, [Email(str(i), t) for i, t in enumerate(texts)])
                    together = concurrent_scorer_rate(onnx_bytes, repeated(texts), workers)
                print(f"[bench]   raw scorer (ModelSession, 1 thread): {alone:.0f} emails/s alone; {workers} at once: "
                      f"{together.per_s:.0f} emails/s ({together.per_cpu_s:.0f} per CPU second); load average "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
            peak, wall, said = measured_submit(state_dir, path, measurement)
            rows.append((n, size / 1e6, peak, wall, n / wall))
            print(f"[bench]   submit: peak {peak:.0f} MB, {wall:.1f} s ({n / wall:.0f} emails/s); {said}", flush=True)
            path.unlink()
            if args.pipeline:
                scored(stack, store, n, json.loads(said)["batch_id"], wall, together, alone * workers,
                       args.worker_cpus)
    if args.state_dir is None:
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"\n{'emails':>9} {'input MB':>9} {'peak RSS MB':>12} {'wall s':>8} {'emails/s':>9}")
    for n, mb, peak, wall, rate in rows:
        print(f"{n:>9} {mb:>9.0f} {peak:>12.0f} {wall:>8.1f} {rate:>9.0f}")


def _cpus(text: str) -> set[int]:
    cpus = {int(c) for c in text.split(",")}
    if not cpus < os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(f"expected some of the CPUs {sorted(os.sched_getaffinity(0))}, "
                                         f"leaving one for the rest; got {sorted(cpus)}")
    return cpus


def pin_workers(stack: LocalStack, cpus: set[int]) -> None:
    """Pin each Celery worker's processes (main and pool) to `cpus`; a pool process forked later inherits it."""
    import psutil

    for name, pid in stack.pids().items():
        if name.startswith("celery-worker-"):
            leader = psutil.Process(pid)
            for proc in [leader, *leader.children(recursive=True)]:
                proc.cpu_affinity(sorted(cpus))


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """This process (and what it spawns meanwhile) on `cpus`, then back; nothing when `cpus` is None."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_busy_seconds(cpus: set[int] | None = None) -> float:
    """CPU seconds `cpus` (None: every core) spent busy so far (/proc/stat: all but idle and iowait)."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name == "cpu" if cpus is None else name[3:].isdigit() and int(name[3:]) in cpus:
            fields = [int(v) for v in values]
            busy += sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def stack_cpu_seconds(stack: LocalStack) -> dict[str, float]:
    """CPU seconds (user + system) so far of each part of the stack, its processes and their children together."""
    import psutil

    seconds = {}
    for name, pid in stack.pids().items():
        total = 0.0
        try:
            leader = psutil.Process(pid)
            for proc in [leader, *leader.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
        seconds[name] = total
    return seconds


def scored(stack: LocalStack, store: ObjectStore, n: int, batch_id: str, submit_s: float, together: ConcurrentRate,
           single_times_n: float, worker_cpus: set[int] | None = None) -> None:
    """Wait for the batch's pipeline, fetch its results with `cscore owner results`, print the figures."""
    cpu_before, busy_before = stack_cpu_seconds(stack), cpu_busy_seconds()
    pinned_before = cpu_busy_seconds(worker_cpus or set())
    t0 = time.perf_counter()
    status = wait_for_batch(store, TENANT, batch_id, timeout=4 * 3600,
                            progress=lambda s: print(f"[bench]   {time.strftime('%H:%M:%S')} batch {s}", flush=True))
    pipeline = time.perf_counter() - t0
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in stack_cpu_seconds(stack).items()}
    busy = cpu_busy_seconds() - busy_before
    pinned_busy = cpu_busy_seconds(worker_cpus or set()) - pinned_before
    if status["state"] != "succeeded":
        raise RuntimeError(f"batch {batch_id} failed: {status.get('reason')}")
    rate = n / pipeline
    print(f"[bench]   pipeline: {pipeline:.1f} s ({rate:.0f} emails/s; {rate / together.per_s:.3f} of the "
          f"{together.processes} raw scorers at once ({together.per_s:.0f}); former figure {rate / single_times_n:.3f} "
          f"of one alone x {together.processes} ({single_times_n:.0f})); workers' peak RSS {worker_peak_mb(stack):.0f} "
          f"MB; load average {os.getloadavg()[0]:.1f}", flush=True)
    stack_total = sum(cpu.values())
    print(f"[bench]   CPU seconds while the pipeline ran: stack {stack_total:.1f} ({stack_total / pipeline:.2f} of "
          f"{os.cpu_count()} cores; the whole machine {busy / pipeline:.2f}): " + ", ".join(
              f"{name} {s:.1f}" for name, s in sorted(cpu.items(), key=lambda kv: -kv[1]) if s >= 0.05)
          + f"; workers {n / max(1e-9, sum(s for k, s in cpu.items() if k.startswith('celery-worker-'))):.0f} emails "
          f"per CPU second (raw scorers {together.per_cpu_s:.0f})", flush=True)
    if worker_cpus:
        own = sum(s for k, s in cpu.items() if k.startswith("celery-worker-"))
        print(f"[bench]   the workers' CPUs {sorted(worker_cpus)}: busy {pinned_busy / pipeline:.2f} of "
              f"{len(worker_cpus)}, the workers {own / pipeline:.2f}, other work {(pinned_busy - own) / pipeline:.2f}",
              flush=True)
    print("[bench]   workers' seconds summed over shards: " + ", ".join(
        f"{phase.removeprefix('worker.')} {s:.1f}" for phase, s in worker_seconds(store, batch_id).items()), flush=True)
    out = stack.state_dir / f"results-{batch_id}.parquet"
    peak, wall, _ = measured_results(stack.state_dir, batch_id, out)
    total = submit_s + pipeline + wall
    print(f"[bench]   results: peak {peak:.0f} MB, {wall:.1f} s; end to end {total:.1f} s ({n / total:.0f} "
          f"emails/s); {pq.ParquetFile(out).metadata.num_rows} rows verified and decrypted", flush=True)
    out.unlink()


if __name__ == "__main__":
    main()
