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

from packaging.markers import Marker

from enclave.measurement import MEASURED_FOLDERS, PROJECT_DISTRIBUTION, _normalise, closure_distributions

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Locked:
    """One locked distribution: its name and version, and the SHA-256 of each of its wheels."""

    name: str
    version: str
    wheel_hashes: tuple[str, ...]


# The image's interpreter (Debian bookworm's python3): markers in the lock are evaluated for it, not for
# the interpreter running this script (redis needs async-timeout below 3.11.3, for example).
IMAGE_PYTHON = {"python_full_version": "3.11.2", "python_version": "3.11", "implementation_name": "cpython",
                "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
                "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def locked_closure(lock: Path = REPO / "uv.lock") -> list[Locked]:
    """The worker's closure as locked for the image's interpreter: the installed closure's distributions and
    every locked dependency of theirs whose marker holds there (LookupError naming one the lock lacks)."""
    packages: dict[str, dict[str, Any]] = {}
    for entry in tomllib.loads(lock.read_text())["package"]:
        packages.setdefault(_normalise(entry["name"]), entry)
    wanted = [_normalise(d.name) for d in closure_distributions()]
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        if name not in packages:
            raise LookupError(f"{lock}: no locked {name} (the worker imports it); run `uv lock`")
        seen.add(name)
        for dep in packages[name].get("dependencies", ()):
            if "marker" not in dep or Marker(dep["marker"]).evaluate(dict(IMAGE_PYTHON)):
                wanted.append(_normalise(dep["name"]))
    out = []
    for name in sorted(seen - {PROJECT_DISTRIBUTION}):
        entry = packages[name]
        hashes = tuple(w["hash"].removeprefix("sha256:") for w in entry.get("wheels", ()))
        if not hashes:
            raise LookupError(f"{lock}: {name}=={entry['version']} has no wheel; the image installs wheels only")
        out.append(Locked(name, entry["version"], hashes))
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
