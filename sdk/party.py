"""A party's own secrets on its own machine: its signing key and its broker admin credential."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import OKPKey

from enclave.signing import generate_signing_key
from sdk.broker_admin import BrokerAdmin


class BrokerNotConfigured(RuntimeError):
    """A party's broker URL is not in the environment (no stack's variables loaded, no broker of one's own)."""

    def __init__(self, role: str) -> None:
        self.role = role
        super().__init__(f"CSCORE_{role.upper()}_BROKER_URL is not set: start the stack (`cscore stack start`) "
                         f"or point it at the {role}'s key broker")


@dataclass(frozen=True)
class Party:
    """The owner's or the provider's home directory (`<state>/owner`, `<state>/provider`)."""

    home: Path
    broker_url: str
    broker_name: str = ""  # the broker's name in the workers' configuration (default: the role)

    @classmethod
    def from_env(cls, role: str) -> Party:
        """`role` is "owner" or "provider"; paths and URLs come from the stack's environment."""
        state = Path(os.environ.get("CSCORE_STATE_DIR", ".state"))
        url = os.environ.get(f"CSCORE_{role.upper()}_BROKER_URL")
        if not url:
            raise BrokerNotConfigured(role)
        return cls(home=state / role, broker_url=url,
                   broker_name=os.environ.get(f"CSCORE_{role.upper()}_BROKER_NAME") or role)

    def signing_key(self) -> OKPKey:
        """This party's Ed25519 signing key, created on first use and kept in its home (mode 0600)."""
        path = self.home / "signing.jwk"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(generate_signing_key().as_dict(private=True)))
            path.chmod(0o600)
        return OKPKey.import_key(json.loads(path.read_text()))

    def public_key(self) -> dict[str, Any]:
        """The public half of the signing key: what others pin to verify this party's documents."""
        return dict(self.signing_key().as_dict(private=False))

    def trust_provider(self, public_jwk: dict[str, Any]) -> Path:
        """Pin a model provider's card-signing key (owner side)."""
        folder = self.home / "providers"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{OKPKey.import_key(public_jwk).thumbprint()}.jwk"
        path.write_text(json.dumps(public_jwk))
        return path

    def trusted_providers(self) -> list[dict[str, Any]]:
        """The provider keys this owner pinned."""
        folder = self.home / "providers"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.jwk"))] if folder.is_dir() else []

    def broker(self) -> BrokerAdmin:
        token_path = self.home / "broker-admin-token"
        if not token_path.exists():
            raise RuntimeError(f"no broker admin token at {token_path}: the key broker's operator must hand it over")
        return BrokerAdmin(self.broker_url, token_path.read_text().strip(), party=self.home.name)
