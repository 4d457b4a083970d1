"""The local stack on the embedded default: moto (S3+SQS), Redis, simulated SEV-SNP, two key brokers,
Celery workers and Airflow standalone, all on loopback, all state under one directory.

A part whose variable is already set in the environment (CSCORE_S3_ENDPOINT, CSCORE_CELERY_BROKER_URL,
CSCORE_OWNER_BROKER_URL, ...) is taken as a real server: it is not started, its URL is passed on.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from infra.local import parts, procs
from infra.local.procs import Part
from infra.local.util import StackError

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 15.0

__all__ = ["LocalStack", "StackError", "load_env"]


class LocalStack:
    """Start, describe and stop every process of the local stack (see infra/README.md)."""

    def __init__(self, state_dir: Path, workers: int = 2, airflow: bool = True, *, brokers: bool = True,
                 sim_tee: bool = True, environ: Mapping[str, str] | None = None, repo: Path = REPO,
                 out: Callable[[str], None] | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.workers = workers
        self.airflow = airflow
        self.brokers = brokers
        self.sim_tee = sim_tee
        self.repo = repo
        self.environ = dict(os.environ if environ is None else environ)
        self.env: dict[str, str] = {}
        self.airflow_env: dict[str, str] = {}
        self.parts: dict[str, Part] = {}
        self.timings: dict[str, float] = {}
        self._out = out or (lambda line: print(line, flush=True))

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        """Start every part, wait until each is ready, write <state>/stack.env; stop all on failure."""
        t0 = time.monotonic()
        self._prepare_dirs()
        if cleaned := procs.clean_stale(self.state_dir):
            self._out(f"[stack] cleaned stale pid files from an earlier run: {', '.join(cleaned)}")
        try:
            self._start_parts()
        except BaseException:
            self.stop()
            raise
        self.write_env_file()
        self._out(f"[stack] ready in {time.monotonic() - t0:.1f} s; environment in {self.env_file}")
        return self

    def stop(self) -> None:
        """Stop every started process tree (SIGTERM, SIGKILL after a timeout), remove the pid files."""
        t0 = time.monotonic()
        stopped = list(self.parts)
        procs.kill_trees([part.pid for part in self.parts.values()], STOP_TIMEOUT_S)  # all at once: faster
        for name in stopped:
            part = self.parts.pop(name)
            if part.popen is not None:
                part.popen.wait(timeout=5)  # reap our direct child
            part.pid_file.unlink(missing_ok=True)
        if left := procs.sweep(self.state_dir):  # orphans that left every group (task processes)
            self._out(f"[stack] killed leftover processes {sorted(left)}")
        if stopped:
            self._out(f"[stack] stopped {', '.join(stopped)} in {time.monotonic() - t0:.1f} s")

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def env_file(self) -> Path:
        return self.state_dir / "stack.env"

    def pids(self) -> dict[str, int]:
        """Leader pid of each running part."""
        return {name: part.pid for name, part in self.parts.items()}

    def write_env_file(self) -> None:
        """<state>/stack.env: KEY=VALUE lines, shell-quoted where needed (read back with load_env)."""
        lines = [f"{k}={shlex.quote(v)}" for k, v in {**self.env, **self.airflow_env}.items()]
        self.env_file.touch(mode=0o600)  # it holds the Airflow JWT secret
        self.env_file.chmod(0o600)
        self.env_file.write_text("\n".join(lines) + "\n")

    # -- parts -------------------------------------------------------------------------------------

    def _start_parts(self) -> None:
        self.env.update(CSCORE_STATE_DIR=str(self.state_dir), CSCORE_TRUST_DIR=str(self.state_dir / "trust"))
        self._object_store()
        self._celery_transport()
        self._tee()
        self._key_brokers()
        self._celery_workers()
        self._airflow()

    def _object_store(self) -> None:
        if given := self._given("CSCORE_S3_ENDPOINT", "CSCORE_SQS_QUEUE_URL"):
            self.env.update(given)
            self.env.setdefault("CSCORE_BUCKET", self.environ.get("CSCORE_BUCKET", parts.aws.BUCKET))
            self._out(f"[stack] object storage: using {given.get('CSCORE_S3_ENDPOINT', 'AWS')} (not started)")
            return
        with self._step("moto S3+SQS", lambda: f"on {self.env['CSCORE_S3_ENDPOINT']}"):
            self.env.update(parts.start_moto(self))

    def _celery_transport(self) -> None:
        if given := self._given("CSCORE_CELERY_BROKER_URL"):
            broker = given["CSCORE_CELERY_BROKER_URL"]
            backend = self.environ.get("CSCORE_CELERY_RESULT_BACKEND") or parts.default_backend(broker)
            self.env.update(CSCORE_CELERY_BROKER_URL=broker, CSCORE_CELERY_RESULT_BACKEND=backend)
            self._out(f"[stack] celery transport: using {_redact(broker)} (not started)")
            return
        with self._step("redis", lambda: f"on {self.env['CSCORE_CELERY_BROKER_URL']}"):
            self.env.update(parts.start_redis(self))

    def _tee(self) -> None:
        tee = self.environ.get("CSCORE_TEE", "simulated-sev-snp")
        self.env["CSCORE_TEE"] = tee
        if tee != "simulated-sev-snp" or not self.sim_tee:
            self._out(f"[stack] simulated SEV-SNP: skipped (CSCORE_TEE={tee}, sim_tee={self.sim_tee})")
            return
        with self._step("simulated SEV-SNP firmware", lambda: f"in {self.env['CSCORE_SIM_TEE_DIR']}"):
            self.env.update(parts.init_sim_tee(self))

    def _key_brokers(self) -> None:
        for party in ("owner", "provider"):
            var = f"CSCORE_{party.upper()}_BROKER_URL"
            if given := self._given(var):
                self.env.update(given)
                self._out(f"[stack] {party} key broker: using {given[var]} (not started)")
            elif not self.brokers:
                self._out(f"[stack] {party} key broker: skipped (brokers=False)")
            else:
                with self._step(f"{party} key broker", lambda v=var: f"on {self.env[v]}"):
                    self.env[var] = parts.start_broker(self, party)

    def _celery_workers(self) -> None:
        if self.workers <= 0:
            self._out("[stack] celery workers: none (workers=0)")
            return
        with self._step(f"{self.workers} celery workers", lambda: "(concurrency 1 each)"):
            parts.start_workers(self)

    def _airflow(self) -> None:
        if given := self._given("CSCORE_AIRFLOW_URL"):
            self.env.update(given)
            self._out(f"[stack] airflow: using {given['CSCORE_AIRFLOW_URL']} (not started)")
            return
        if not self.airflow:
            self._out("[stack] airflow: skipped (airflow=False)")
            return
        with self._step("airflow db migrate", lambda: f"in {self.state_dir / 'airflow'}"):
            self.airflow_env = parts.airflow_env(self)
            parts.migrate_airflow(self)
        with self._step("airflow api-server, scheduler, dag-processor, triggerer",
                        lambda: f"on {self.env['CSCORE_AIRFLOW_URL']}"):
            parts.start_airflow(self)

    # -- helpers used by the parts -----------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        """Environment for every started process: ours, the stack's variables, the repo importable."""
        venv_bin = str(Path(sys.executable).parent)
        env = {**self.environ, **self.env, **self.airflow_env}
        env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "/usr/bin:/bin")])
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(self.repo), env.get("PYTHONPATH", "")] if p)
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env.setdefault("AWS_DEFAULT_REGION", parts.aws.REGION)
        return env

    def spawn(self, name: str, argv: list[str]) -> Part:
        """Start a long-running part; remembered for stop()."""
        part = procs.spawn(name, argv, self.child_env(), self.state_dir, self.repo)
        self.parts[name] = part
        return part

    def run_once(self, name: str, argv: list[str], timeout: float) -> None:
        """Run a one-shot command, logged to logs/<name>.log; StackError with the log tail if it fails."""
        log_file = self.state_dir / "logs" / f"{name}.log"
        with open(log_file, "ab") as log:
            try:
                rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env={**self.child_env(), procs.MARKER: str(self.state_dir)},
                                    cwd=self.repo, timeout=timeout, start_new_session=True).returncode
            except subprocess.TimeoutExpired as exc:
                raise StackError(f"{name}: timed out after {timeout:.0f} s; see {log_file}") from exc
        if rc != 0:
            raise StackError(f"{name}: `{' '.join(argv)}` exited with {rc}; {log_file} ends with:\n"
                             f"{procs.log_tail(log_file)}")

    def _given(self, *names: str) -> dict[str, str]:
        """The variables among names set (non-empty) in the environment: those parts are real servers."""
        return {n: self.environ[n] for n in names if self.environ.get(n)}

    def _prepare_dirs(self) -> None:
        for sub in ("pids", "logs", "trust/tenants", "owner", "provider"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _step(self, label: str, where: Callable[[], str]) -> Iterator[None]:
        """Time one part's start-up and print a progress line once it is ready."""
        t0 = time.monotonic()
        self._out(f"[stack] {label} starting ...")
        yield
        self.timings[label] = dt = time.monotonic() - t0
        self._out(f"[stack] {label} {where()} ... ready in {dt:.1f} s")


def load_env(path: Path) -> dict[str, str]:
    """Read a stack.env written by LocalStack (KEY=VALUE, shell-quoted values)."""
    env = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = "".join(shlex.split(value)) if value else ""
    return env


def _redact(url: str) -> str:
    """A URL without its password, for progress lines."""
    head, sep, tail = url.partition("@")
    return f"{head.rsplit(':', 1)[0]}:***@{tail}" if sep and head.count(":") >= 2 else url
