"""The local stack on the embedded default: moto (S3+SQS), Redis, simulated SEV-SNP, two key brokers,
Celery workers and Airflow standalone, all on loopback, all state under one directory.

A part whose variable is already set in the environment (CSCORE_S3_ENDPOINT, CSCORE_CELERY_BROKER_URL,
CSCORE_OWNER_BROKER_URL, ...) is taken as a real server: it is not started, its URL is passed on.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from infra.local import machine_users, parts, procs
from infra.local.envfile import load_env
from infra.local.netns import Namespace
from infra.local.parts import Pending
from infra.local.procs import Part
from infra.local.util import StackError
from wire.worker_config import WorkerConfig

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 15.0
SERVERS_LAST = ("moto", "redis")  # stopped after their clients, which would otherwise hang on shutdown

__all__ = ["LocalStack", "StackError", "load_env"]


BROKER_URLS = ("CSCORE_OWNER_BROKER_URL", "CSCORE_PROVIDER_BROKER_URL")
OBJECT_STORE_URLS = ("CSCORE_S3_ENDPOINT", "CSCORE_SQS_QUEUE_URL", "CSCORE_SQS_TRAINING_QUEUE_URL")  # set: real servers
ROLES = ("redis", "brokers", "workers", "platform")  # what can be placed on a simulated machine


class LocalStack:
    """Start, describe and stop every process of the local stack (see infra/README.md)."""

    def __init__(self, state_dir: Path, workers: int = 2, airflow: bool = True, *, brokers: bool = True,
                 sim_tee: bool = True, environ: Mapping[str, str] | None = None, repo: Path = REPO,
                 out: Callable[[str], None] | None = None, machines: Mapping[str, Namespace] | None = None,
                 lan: str | None = None, users: bool | None = None, fresh: bool = False) -> None:
        """`machines` places roles (ROLES) on simulated machines (infra/local/netns.py): their processes run
        in that namespace and bind its address; `lan` is the CIDR the local CAs certify for them. `users`
        (default: whenever there are machines) runs each machine's processes as an account of its own, its
        folders 0700 (infra/local/machine_users.py); root only. `fresh` (the demo): when this stack starts its own
        moto, an earlier run's state is moved to `<state_dir>.previous` first: its bucket was in memory, so its
        audit log, brokers' decisions and Airflow runs would describe objects that are gone."""
        self.state_dir = Path(state_dir).resolve()
        self.workers = workers
        self.airflow = airflow
        self.brokers = brokers
        self.sim_tee = sim_tee
        self.fresh = fresh
        self.repo = repo
        self.environ = dict(os.environ if environ is None else environ)
        self.env: dict[str, str] = {}
        self.broker_cas: dict[str, Path] = {}  # party -> the CA its broker's TLS certificate chains to
        self.airflow_env: dict[str, str] = {}
        self.parts: dict[str, Part] = {}
        self.worker_metrics: dict[str, str] = {}  # worker part -> its Prometheus endpoint (tasks.metrics)
        self.timings: dict[str, float] = {}
        self._out = out or (lambda line: print(line, flush=True))
        self._lock: IO[str] | None = None
        self.machines = dict(machines or {})
        if unknown := set(self.machines) - set(ROLES):
            raise StackError(f"machines: unknown roles {sorted(unknown)}; expected some of {ROLES}")
        if self.machines and not lan:
            raise StackError("machines need lan, the CIDR of their addresses (Network.cidr)")
        self.lan = lan or "127.0.0.0/8"
        self.redis_ca: Path | None = None  # the CA of a TLS Redis (on a simulated machine)
        self.users = bool(self.machines) if users is None else users
        if self.users:
            machine_users.require_root()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        """Start every part, wait until each is ready, write <state>/stack.env; stop all on failure."""
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._refuse_if_running()
        if self.fresh and self.owns_object_store:
            self._set_aside_earlier_run()
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
        clients = [name for name in stopped if name not in SERVERS_LAST]
        for wave in (clients, [name for name in stopped if name in SERVERS_LAST]):  # servers go last
            killed = procs.kill_trees([self.parts[name].pid for name in wave], STOP_TIMEOUT_S)
            if killed:
                self._out(f"[stack] SIGKILL after {STOP_TIMEOUT_S:.0f} s: {', '.join(killed)}")
            for name in wave:
                part = self.parts.pop(name)
                part.popen.wait(timeout=5)  # reap our direct child
                part.pid_file.unlink(missing_ok=True)
        if left := procs.sweep(self.state_dir):  # orphans that left every group (task processes)
            self._out(f"[stack] killed leftover processes {sorted(left)}")
        if stopped:
            self._out(f"[stack] stopped {', '.join(stopped)} in {time.monotonic() - t0:.1f} s")
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _take_lock(self) -> None:
        """Hold <state>/stack.lock while running: a second stack must not take a live one for stale."""
        if self._lock is not None:
            return
        lock = open(self.state_dir / "stack.lock", "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.seek(0)
            lock.close()
            raise StackError(f"another local stack is running on {self.state_dir} (its lock is held); "
                             "stop it or use another state dir") from exc
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    @property
    def owns_object_store(self) -> bool:
        """Whether this stack starts its own moto (in memory: a new, empty bucket and queue each start)."""
        return not self._given(*OBJECT_STORE_URLS)

    def _set_aside_earlier_run(self) -> None:
        """Move everything in the state dir but the held lock to `<state_dir>.previous` (an older one removed)."""
        earlier = [p for p in self.state_dir.iterdir() if p.name != "stack.lock"]
        if not earlier:
            return
        previous = self.state_dir.with_name(f"{self.state_dir.name}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir()
        for path in earlier:
            path.rename(previous / path.name)
        self._out(f"[stack] an earlier run's state moved to {previous}: this run starts fresh (that run's bucket "
                  "was in memory)")

    def _refuse_if_running(self) -> None:
        """A stack started here earlier (`cscore stack start` exits and leaves it running) is never taken
        for stale: restarting it would lose its S3 data and strand every shell that sourced stack.env."""
        if found := procs.running(self.state_dir):
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            pids = ", ".join(f"{name} {pid}" for name, pid in found.items())
            raise StackError(f"a stack is running here ({self.state_dir}: pids {pids}); "
                             f"`cscore --state-dir {self.state_dir} stack stop` first")

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
        """Start independent parts together, wait in dependency order (Airflow needs every URL)."""
        self.env["CSCORE_STATE_DIR"] = str(self.state_dir)
        s3, redis, tee = self._object_store(), self._celery_transport(), self._tee()
        migrate = self._airflow_migrate()
        brokers = self._key_brokers()
        parts.write_ca_bundle(self)
        urls = {"CSCORE_OWNER_BROKER_URL", "CSCORE_PROVIDER_BROKER_URL"}
        config = parts.write_worker_config(self) if urls <= set(self.env) else None
        self._ready(redis, tee, s3)  # fastest first, so each time measured is its own
        self._ready(*brokers)
        self._platform_words(config)
        workers = self._celery_workers()
        self._ready(migrate)
        self._ready(workers, self._airflow() if migrate else None)

    def _platform_words(self, config: WorkerConfig | None) -> None:
        """Publish the workers' configuration; register the owner broker with the provider's (when both ours)."""
        if config is not None and self.env.get("CSCORE_BUCKET"):
            parts.publish_worker_config(self, config)
            self._out(f"[stack] worker configuration {config.digest_hex()[:16]}... published "
                      f"(HOST_DATA of every worker)")
        for provider in parts.PROVIDERS if "owner" in self.broker_cas else ():
            if provider in self.broker_cas:
                owner = parts.register_owner_broker(self, provider)
                self._out(f"[stack] {provider} broker accepts model grants of owner broker '{owner}'")

    def _object_store(self) -> Pending | None:
        if given := self._given(*OBJECT_STORE_URLS):
            self.env.update(given)
            self.env.setdefault("CSCORE_BUCKET", self.environ.get("CSCORE_BUCKET", parts.aws.BUCKET))
            self._out(f"[stack] object storage: using {given.get('CSCORE_S3_ENDPOINT', 'AWS')} (not started)")
            return None
        return self._begin(parts.spawn_moto(self))

    def _celery_transport(self) -> Pending | None:
        if given := self._given("CSCORE_CELERY_BROKER_URL"):
            broker = given["CSCORE_CELERY_BROKER_URL"]
            backend = self.environ.get("CSCORE_CELERY_RESULT_BACKEND") or parts.default_backend(broker)
            self.env.update(CSCORE_CELERY_BROKER_URL=broker, CSCORE_CELERY_RESULT_BACKEND=backend)
            self._out(f"[stack] celery transport: using {parts.redact(broker)} (not started)")
            return None
        return self._begin(parts.spawn_redis(self))

    def _tee(self) -> Pending | None:
        tee = self.environ.get("CSCORE_TEE", "simulated-sev-snp")
        self.env["CSCORE_TEE"] = tee
        if tee != "simulated-sev-snp" or not self.sim_tee:
            self._out(f"[stack] simulated SEV-SNP: skipped (CSCORE_TEE={tee}, sim_tee={self.sim_tee})")
            return None
        return self._begin(parts.spawn_sim_tee(self))

    def _key_brokers(self) -> list[Pending | None]:
        pending: list[Pending | None] = []
        for party in ("owner", *parts.PROVIDERS):
            var = f"CSCORE_{party.upper()}_BROKER_URL"
            if given := self._given(var):
                self.env.update(given)
                self._out(f"[stack] {party} key broker: using {given[var]} (not started)")
            elif not self.brokers:
                self._out(f"[stack] {party} key broker: skipped (brokers=False)")
            elif party not in ("owner", "provider") and self._given(*BROKER_URLS):
                # A second provider is the embedded marketplace's: not started beside brokers of real servers.
                self._out(f"[stack] {party} key broker: skipped (real brokers given)")
            else:
                pending.append(self._begin(parts.spawn_broker(self, party)))
        return pending

    def _celery_workers(self) -> Pending | None:
        if self.workers <= 0:
            self._out("[stack] celery workers: none (workers=0)")
            return None
        self.env["CSCORE_WORKER_POOL_SIZE"] = str(self.workers)  # the platform's ping can stop at that many
        return self._begin(parts.spawn_workers(self))

    def _airflow_migrate(self) -> Pending | None:
        if given := self._given("CSCORE_AIRFLOW_URL"):
            self.env.update(given)
            self._out(f"[stack] airflow: using {given['CSCORE_AIRFLOW_URL']} (not started)")
            return None
        if not self.airflow:
            self._out("[stack] airflow: skipped (airflow=False)")
            return None
        self.airflow_env = parts.airflow_env(self)
        if self.owns_object_store and not self._given("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            previous = parts.set_aside_airflow_db(Path(self.airflow_env["AIRFLOW_HOME"]))
            if previous is not None:
                self._out(f"[stack] airflow: the last run's metadata moved to {previous} (its bucket and queue "
                          "were this stack's own, in memory: gone)")
        return self._begin(parts.spawn_airflow_migrate(self))

    def _airflow(self) -> Pending:
        return self._begin(parts.spawn_airflow(self))

    def _begin(self, pending: Pending) -> Pending:
        self._out(f"[stack] {pending.label} starting ...")
        return pending

    def _ready(self, *pending: Pending | None) -> None:
        """Wait for each part in turn; print where it runs and how long it took from its start."""
        for p in pending:
            if p is not None:
                where = p.wait()
                self.timings[p.label] = dt = time.monotonic() - p.t0
                self._out(f"[stack] {p.label} {where} ... ready in {dt:.1f} s")

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

    def machine(self, role: str) -> Namespace | None:
        """The simulated machine a role runs on, None for the host."""
        return self.machines.get(role)

    def host(self, role: str) -> str:
        """The address a role's servers bind and advertise: its machine's, else loopback."""
        machine = self.machine(role)
        return machine.address if machine else "127.0.0.1"

    def spawn(self, name: str, argv: list[str], *, without: tuple[str, ...] = (),
              extra: Mapping[str, str] | None = None, role: str | None = None) -> Part:
        """Start a long-running part, its environment less the variables in ``without``, plus ``extra`` (this
        part's own settings), on its role's machine; remembered for stop()."""
        env = self._own_env(name, role, {**{k: v for k, v in self.child_env().items() if k not in without},
                                         **(extra or {})})
        part = procs.spawn(name, self.launcher(name, role, argv), env, self.state_dir, self.repo)
        self.parts[name] = part
        return part

    def _account(self, name: str, role: str | None) -> machine_users.MachineUser | None:
        """The account of part `name` (or of its role) when users are separate; None: runs as this process."""
        return (machine_users.account(name) or machine_users.account(role or "")) if self.users else None

    def _own_env(self, name: str, role: str | None, env: dict[str, str]) -> dict[str, str]:
        account = self._account(name, role)
        return machine_users.own_copies(env, self.state_dir, account) if account else env

    def launcher(self, name: str, role: str | None, argv: list[str]) -> list[str]:
        """argv on role's machine (its namespace), as the account of part `name` or of role when users are
        separate (handing it its folders first); as is otherwise."""
        machine = self.machine(role) if role else None
        account = self._account(name, role)
        argv = [*machine_users.launcher(self.state_dir, account, self.repo), *argv] if account else argv
        return [*machine.launcher, *argv] if machine else argv

    def run_as(self, key: str, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a one-off command as account `key` (a part name or role, see machine_users.ACCOUNTS) on that
        role's machine, with the stack's environment; its output captured. For the operator's own commands
        and for tests that act as one party."""
        role = key if key in ROLES else "brokers" if key.endswith("-broker") else None
        env = self._own_env(key, role, self.child_env())
        return subprocess.run(self.launcher(key, role, argv),  # noqa: S603
                              env=env, cwd=self.repo, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def finish(self, part: Part, timeout: float) -> None:
        """Wait for a one-shot part to exit 0 (StackError with its log tail otherwise); forget it."""
        try:
            rc = part.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{part.name}: not done after {timeout:.0f} s; see {part.log_file}") from exc
        if rc != 0:
            raise StackError(f"{part.name}: exited with {rc}; {part.log_file} ends with:\n"
                             f"{procs.log_tail(part.log_file)}")
        self.parts.pop(part.name, None)
        part.pid_file.unlink(missing_ok=True)

    def _given(self, *names: str) -> dict[str, str]:
        """The variables among names set (non-empty) in the environment: those parts are real servers."""
        return {n: self.environ[n] for n in names if self.environ.get(n)}

    def _prepare_dirs(self) -> None:
        for sub in ("pids", "logs", "owner", *parts.PROVIDERS, "platform"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.users:  # every account's folders its own from the start; the rest root's, listable by none
            self.state_dir.chmod(0o711)
            for sub in ("pids", "logs", "tls"):  # tls/: the local CAs, their keys (machines get copies)
                (self.state_dir / sub).mkdir(exist_ok=True)
                (self.state_dir / sub).chmod(0o700)
            for account in machine_users.ACCOUNTS.values():
                machine_users.hand_over(self.state_dir, account)
