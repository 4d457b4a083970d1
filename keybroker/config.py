"""Broker configuration: the JSON file named by `python -m keybroker serve --config FILE`."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from keybroker.store import is_postgres_url, redact_url
from wire.endpoint import is_loopback
from wire.jsonlog import log_format

TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")  # as attestation.evidence names them


@dataclass(frozen=True)
class BrokerConfig:
    """One broker's settings; the required keys are those fixed in docs/ARCHITECTURE.md."""

    name: str
    host: str
    port: int
    kek_path: Path
    admin_token_path: Path
    # The key store: a SQLite file (`db_path`), or PostgreSQL (`db_url`, `postgresql://...`; wins over db_path), or
    # PostgreSQL whose URL, password included, is the content of the file `db_url_path` (a mounted Secret: the
    # password then never sits in the config). db_url and db_url_path exclude each other.
    db_path: Path | None = None
    db_url: str | None = None
    db_url_path: Path | None = None
    trusted_roots_dir: Path | None = None
    # Loads the simulated root (forgeable by anyone with the simulated firmware): development only, and then
    # only keys whose id matches one of `simulated_key_ids` (fnmatch patterns) accept it.
    accept_simulated: bool = False
    simulated_key_ids: list[str] = field(default_factory=list)
    token_ttl_s: int = 300
    # Optional tuning knobs (defaults suit the local stack).
    nonce_ttl_s: int = 60
    max_sessions: int = 10_000
    max_body_bytes: int = 1 << 20
    rate_limit_rps: float = 200.0
    rate_limit_burst: int = 400
    log_level: str = "info"
    log_format: str = "text"  # `json`: one JSON object per line (wire.jsonlog), for log collectors
    # `GET /metrics` needs `Authorization: Bearer <this file's token>` when set (a scrape credential that is not
    # the admin token); unset, /metrics answers anyone who reaches the port (counts only, no ids).
    metrics_token_path: Path | None = None
    max_connections: int | None = None  # uvicorn limit_concurrency: beyond it, 503 (None: unlimited)
    shutdown_timeout_s: int = 3  # on SIGTERM, wait this long for open connections, then close them
    # TLS on the port (both or neither). Without them the broker binds loopback hosts only.
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    # Platform floor for every key (a key's own min_tcb / chip_ids replace these; see keybroker.policy).
    min_tcb: dict[str, int] = field(default_factory=dict)
    chip_ids: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BrokerConfig:
        """Build a config from parsed JSON; unknown keys are kept in `extra`, paths become Paths."""
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("name", "host", "port", "kek_path", "admin_token_path") if k not in raw]
        if all(raw.get(k) is None for k in ("db_path", "db_url", "db_url_path")):
            missing.append("db_path (or db_url, or db_url_path)")
        if missing:
            raise ValueError(f"broker config is missing required keys: {', '.join(missing)}")
        values = {k: v for k, v in raw.items() if k in known}
        if values.get("db_url") is not None and values.get("db_url_path") is not None:
            raise ValueError("broker config: db_url and db_url_path both set; keep db_url_path (the URL in a secret "
                             "file) and remove db_url")
        if values.get("db_url") is not None and not is_postgres_url(values["db_url"]):
            raise ValueError(f"broker config: db_url must be a postgresql:// URL, got "
                             f"{redact_url(str(values['db_url']))!r}")
        for key in ("db_path", "db_url_path", "kek_path", "admin_token_path", "trusted_roots_dir", "tls_cert_path",
                    "tls_key_path", "metrics_token_path"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        values["port"] = int(values["port"])
        values["log_format"] = log_format(values.get("log_format"), "broker config: log_format")
        if "min_tcb" in values:
            values["min_tcb"] = check_min_tcb(values["min_tcb"], "min_tcb")
        if "chip_ids" in values:
            values["chip_ids"] = check_chip_ids(values["chip_ids"], "chip_ids")
        check_simulated(values.get("accept_simulated", False), values.get("simulated_key_ids", []))
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

    def simulated_allowed(self, key_id: str) -> bool:
        """Whether evidence from the simulated root may release `key_id` (see `simulated_key_ids`)."""
        return self.accept_simulated and any(fnmatch.fnmatchcase(key_id, p) for p in self.simulated_key_ids)

    @property
    def store_target(self) -> Path | str:
        """What `KeyStore` opens: the Postgres URL if configured (`db_url`, or read from `db_url_path` now), else the
        SQLite file. Raises ValueError naming `db_url_path` (never its content) when it cannot be read or holds no
        postgresql:// URL."""
        if self.db_url_path is not None:
            return self._url_from_file(self.db_url_path)
        if self.db_url is not None:
            return self.db_url
        assert self.db_path is not None  # from_dict requires one of the two
        return self.db_path

    @staticmethod
    def _url_from_file(path: Path) -> str:
        try:
            url = path.read_bytes().decode().strip()  # UTF-8, whatever the locale
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"broker config: db_url_path {path}: cannot be read ({type(exc).__name__}: "
                             f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}); mount the Secret holding the "
                             "key store's URL there") from None
        if not is_postgres_url(url):  # what it holds is not shown: it may be a password
            scheme, found, _ = url.partition("://")
            got = f"a {scheme[:20]}:// URL" if found and scheme.isalnum() else f"{len(url)} characters of another kind"
            raise ValueError(f"broker config: db_url_path {path}: expected one postgresql:// URL in the file, "
                             f"got {got}")
        return url

    @property
    def tls(self) -> bool:
        """Whether the port speaks TLS."""
        return self.tls_cert_path is not None

    @property
    def scheme(self) -> str:
        """`https` with TLS, else `http`."""
        return "https" if self.tls else "http"

    def check_transport(self) -> None:
        """Refuse half a TLS setup, and plain HTTP on anything but a loopback address."""
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("broker config: tls_cert_path and tls_key_path go together (both or neither)")
        for path in (self.tls_cert_path, self.tls_key_path):
            if path is not None and not path.is_file():
                raise ValueError(f"broker config: TLS file {path} does not exist")
        if not self.tls and not is_loopback(self.host):
            raise ValueError(f"broker config: refusing plain HTTP on host {self.host!r}; set tls_cert_path and "
                             "tls_key_path, or bind a loopback address (127.0.0.1, ::1, localhost)")

    @classmethod
    def from_file(cls, path: str | Path) -> BrokerConfig:
        """Read the JSON config file."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def load_kek(self) -> bytes:
        """Return the 32-byte key-encryption key, creating the hex file (mode 0600) if missing."""
        if not self.kek_path.exists():
            _write_secret(self.kek_path, secrets.token_bytes(32).hex())
        kek = bytes.fromhex(self.kek_path.read_text().strip())
        if len(kek) != 32:
            raise ValueError(f"{self.kek_path}: expected 32 bytes as hex, found {len(kek)} bytes")
        return kek

    def load_metrics_token(self) -> str | None:
        """The scrape token for `/metrics` (None: not configured), created like the admin token if missing."""
        if self.metrics_token_path is None:
            return None
        if not self.metrics_token_path.exists():
            _write_secret(self.metrics_token_path, secrets.token_urlsafe(32))
        token = self.metrics_token_path.read_text().strip()
        if len(token) < 16:
            raise ValueError(f"{self.metrics_token_path}: metrics token shorter than 16 characters")
        return token

    def load_admin_token(self) -> str:
        """Return the admin bearer token, creating the file (mode 0600) if missing."""
        if not self.admin_token_path.exists():
            _write_secret(self.admin_token_path, secrets.token_urlsafe(32))
        token = self.admin_token_path.read_text().strip()
        if len(token) < 16:
            raise ValueError(f"{self.admin_token_path}: admin token shorter than 16 characters")
        return token


def check_simulated(accept: Any, patterns: Any) -> None:
    """A broker that loads the simulated root must name the keys that accept it; nothing else may."""
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"simulated_key_ids: expected a list of key-id patterns, got {patterns!r}")
    if accept is True and not patterns:
        raise ValueError("broker config: accept_simulated is true but simulated_key_ids is empty; name the keys "
                         "(fnmatch patterns) that may be released to simulated evidence, or set accept_simulated "
                         "false (production)")
    if accept is not True and patterns:
        raise ValueError("broker config: simulated_key_ids is set but accept_simulated is not true")


def check_min_tcb(value: Any, where: str) -> dict[str, int]:
    """A minimum TCB: {component: 0..255} with SEV-SNP component names."""
    if not isinstance(value, dict) or not set(value) <= set(TCB_COMPONENTS):
        raise ValueError(f"{where}: expected a table with keys from {list(TCB_COMPONENTS)}, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value.values()):
        raise ValueError(f"{where}: expected integers 0..255, got {value!r}")
    return dict(value)


def check_chip_ids(value: Any, where: str) -> list[str]:
    """Allowed chip ids: 64-byte hex strings (lower-cased)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{128}", v)
                                              for v in value):
        raise ValueError(f"{where}: expected a list of 64-byte hex chip ids, got {str(value)[:200]}")
    return [v.lower() for v in value]


def _write_secret(path: Path, text: str) -> None:
    """Create a secret file readable by its owner only (O_EXCL: never clobber a racing writer's file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
