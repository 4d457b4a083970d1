"""The worker's code measurement in the simulated TEE.

``code_measurement()`` is a SHA-384 over the trusted code the worker runs: every ``*.py`` under the
repository's ``enclave/``, ``tasks/`` and ``attestation/`` folders, sorted by relative path, hashing
each path and its content (length-prefixed, so no two trees hash alike). Any code change changes
it, which is what a key broker's ``allowed_measurements`` pins.

On a real SEV-SNP/TDX confidential VM the launch measurement is computed by the firmware over the
VM image (kernel, initrd, command line, ...) and this function is not used for evidence: the
report's MEASUREMENT comes from the hardware.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MEASURED_FOLDERS = ("enclave", "tasks", "attestation")
_DOMAIN = b"cscore code measurement v1\x00"


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def code_measurement(root: Path | None = None) -> bytes:
    """48-byte SHA-384 over the worker's trusted code under ``root`` (default: this checkout)."""
    root = Path(root) if root is not None else _repo_root()
    files = sorted(
        (p.relative_to(root).as_posix(), p)
        for folder in MEASURED_FOLDERS
        if (root / folder).is_dir()
        for p in (root / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    )
    digest = hashlib.sha384(_DOMAIN)
    for rel, path in files:
        for part in (rel.encode(), path.read_bytes()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.digest()
