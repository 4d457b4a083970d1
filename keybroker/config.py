"""Broker configuration: the JSON file named by `python -m keybroker serve --config FILE`."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BrokerConfig:
    """One broker's settings; the required keys are those fixed in docs/ARCHITECTURE.md."""

    name: str
    host: str
    port: int
    db_path: Path
    kek_path: Path
    admin_token_path: Path
    trusted_roots_dir: Path | None = None
    accept_simulated: bool = False
    token_ttl_s: int = 300
    # Optional tuning knobs (defaults suit the local stack).
    nonce_ttl_s: int = 60
    max_sessions: int = 10_000
    max_body_bytes: int = 1 << 20
    rate_limit_rps: float = 200.0
    rate_limit_burst: int = 400
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BrokerConfig:
        """Build a config from parsed JSON; unknown keys are kept in `extra`, paths become Paths."""
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("name", "host", "port", "db_path", "kek_path", "admin_token_path") if k not in raw]
        if missing:
            raise ValueError(f"broker config is missing required keys: {', '.join(missing)}")
        values = {k: v for k, v in raw.items() if k in known}
        for key in ("db_path", "kek_path", "admin_token_path", "trusted_roots_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        values["port"] = int(values["port"])
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

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

    def load_admin_token(self) -> str:
        """Return the admin bearer token, creating the file (mode 0600) if missing."""
        if not self.admin_token_path.exists():
            _write_secret(self.admin_token_path, secrets.token_urlsafe(32))
        token = self.admin_token_path.read_text().strip()
        if len(token) < 16:
            raise ValueError(f"{self.admin_token_path}: admin token shorter than 16 characters")
        return token


def _write_secret(path: Path, text: str) -> None:
    """Create a secret file readable by its owner only (O_EXCL: never clobber a racing writer's file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
