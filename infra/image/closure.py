"""The worker image's Python closure, from the lock: what build.sh installs and what the SBOM lists.

``requirements``: one ``name==version --hash=sha256:...`` line per distribution the worker runs (the same
closure as the simulated measurement, ``enclave.measurement.closure_distributions``), every wheel hash
that ``uv.lock`` records for that version, so ``pip --require-hashes`` installs only locked bytes.
``sbom``: a CycloneDX 1.6 JSON document of those distributions (name, version, purl, wheel hashes),
the interpreter and the trusted packages, made with ``cyclonedx-python-lib``.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.measurement import MEASURED_FOLDERS, PROJECT_DISTRIBUTION, _normalise, closure_distributions

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Locked:
    """One locked distribution: its name and version, and the SHA-256 of each of its wheels."""

    name: str
    version: str
    wheel_hashes: tuple[str, ...]


def locked_closure(lock: Path = REPO / "uv.lock") -> list[Locked]:
    """The worker's closure as locked (LookupError naming a distribution the lock lacks or has no wheel for)."""
    packages: dict[str, list[dict[str, Any]]] = {}
    for entry in tomllib.loads(lock.read_text())["package"]:
        packages.setdefault(_normalise(entry["name"]), []).append(entry)
    out = []
    for dist in closure_distributions():
        name = _normalise(dist.name)
        entries = [e for e in packages.get(name, []) if e["version"] == dist.version]
        if not entries:
            raise LookupError(f"{lock}: no locked {name}=={dist.version} (installed); run `uv sync --frozen`")
        hashes = tuple(w["hash"].removeprefix("sha256:") for w in entries[0].get("wheels", ()))
        if not hashes:
            raise LookupError(f"{lock}: {name}=={dist.version} has no wheel; the image installs wheels only")
        out.append(Locked(name, dist.version, hashes))
    return out


def requirements(closure: list[Locked]) -> str:
    """A pip requirements file with every locked wheel hash (pip --require-hashes picks the matching one)."""
    return "".join(f"{c.name}=={c.version}" + "".join(f" \\\n    --hash=sha256:{h}" for h in c.wheel_hashes) + "\n"
                   for c in closure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.image.closure", description=__doc__)
    parser.add_argument("what", choices=["requirements", "sbom", "trusted"])
    parser.add_argument("--lock", type=Path, default=REPO / "uv.lock")
    parser.add_argument("--packages", type=Path, help="sbom: the image's Debian packages (packages.tsv from build.sh)")
    args = parser.parse_args(argv)
    if args.what == "trusted":  # the folders build.sh copies into the image, nothing else of the repository
        print("\n".join(MEASURED_FOLDERS))
        return 0
    closure = locked_closure(args.lock)
    if args.what == "requirements":
        sys.stdout.write(requirements(closure))
    else:
        from infra.image.sbom import closure_sbom

        sys.stdout.write(closure_sbom(closure, project=PROJECT_DISTRIBUTION, packages_tsv=args.packages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
