"""A CycloneDX 1.6 SBOM of the worker's closure, made with cyclonedx-python-lib.

Components: each locked Python distribution of the closure (name, version, purl, the SHA-256 of each
wheel the lock allows), the trusted packages of this repository, and, when given, the Debian packages
of the image (``packages.tsv`` from build.sh). Serial number and timestamp are derived from the
content, so the same closure gives the same bytes.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cyclonedx.model import HashAlgorithm, HashType
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

if TYPE_CHECKING:
    from infra.image.closure import Locked


def _python_component(c: Locked) -> Component:
    purl = PackageURL(type="pypi", name=c.name, version=c.version)
    return Component(name=c.name, version=c.version, type=ComponentType.LIBRARY, purl=purl, bom_ref=str(purl),
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h) for h in c.wheel_hashes])


def _debian_components(packages_tsv: Path | None) -> Iterable[Component]:
    if packages_tsv is None:
        return []
    rows = [line.split("\t") for line in packages_tsv.read_text().splitlines() if line.strip()]
    purls = [PackageURL(type="deb", namespace="debian", name=name, version=version, qualifiers={"arch": "amd64"})
             for name, version in rows]
    return [Component(name=p.name, version=p.version, type=ComponentType.LIBRARY, purl=p, bom_ref=str(p))
            for p in purls]


def closure_sbom(closure: list[Locked], *, project: str, project_version: str = "0.1.0",
                 packages_tsv: Path | None = None) -> str:
    """The SBOM as CycloneDX 1.6 JSON text."""
    components = [_python_component(c) for c in closure] + list(_debian_components(packages_tsv))
    seed = "\n".join(f"{c.name}=={c.version}" for c in components).encode()
    bom = Bom(serial_number=uuid.UUID(bytes=hashlib.sha256(seed).digest()[:16], version=4))
    bom.metadata.timestamp = datetime(1970, 1, 1, tzinfo=UTC)  # content-derived document: no build time
    root = Component(name=f"{project}-worker", version=project_version, type=ComponentType.APPLICATION,
                     bom_ref=f"{project}-worker", description="confidential worker: enclave/ tasks/ attestation/ wire/")
    bom.metadata.component = root
    for component in components:
        bom.components.add(component)
    bom.register_dependency(root, components)
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"
