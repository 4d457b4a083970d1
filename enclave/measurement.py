"""The worker's measurement in the simulated TEE: the whole closure the worker runs, not just our code.

``code_measurement()`` is a SHA-384 over named components, each a SHA-256 (or SHA-384 for the trusted
code) over what this interpreter would run as the worker:

- ``trusted-code``: every ``*.py`` under the repository's ``enclave/``, ``tasks/``, ``attestation/``
  and ``wire/`` folders, sorted by relative path, each path and content length-prefixed;
- ``python``: the interpreter's version, its binary and (if shared) ``libpython`` by content, and its
  standard library (every file under the stdlib folder except ``site-packages`` and ``__pycache__``);
- ``dist:<name>``: each installed distribution of the worker's closure (the distributions that the
  trusted code imports, their requirements, transitively, and any that plug into Celery/Kombu through
  entry points), by the SHA-256 of each of its files' *actual* content as installed (the file list
  comes from the distribution's ``RECORD``; the hashes written in ``RECORD`` are not trusted);
- ``pth:<file>`` and ``startup:sitecustomize``/``startup:usercustomize``: every ``.pth`` file in any
  directory on ``sys.path`` and the start-up customisation modules, by content, since both run code
  before the worker does;
- ``import:<name>``: where each top-level name of the closure resolves (so a module that shadows a
  distribution's package from an earlier ``sys.path`` entry changes the measurement).

Labels are relative (no machine paths), so an owner with the same lock and the same interpreter build
computes the same value on their own machine with this same function (``cscore worker measure
--simulated`` prints it with its components). The project's own editable install names its checkout;
that path is replaced by ``<root>`` before hashing. The closure is computed once per process.

On a real SEV-SNP/TDX confidential VM the launch measurement is computed by the firmware over the
VM image (OVMF, kernel, initrd, command line) and this function is not used for evidence: the
report's MEASUREMENT comes from the hardware (see ``cscore worker measure``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.machinery
import importlib.metadata as metadata
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

MEASURED_FOLDERS = ("enclave", "tasks", "attestation", "wire")
PROJECT_DISTRIBUTION = "cscore"
# Extras the worker needs at run time that no import statement names (Kombu's Redis transport).
ROOT_EXTRAS = {"celery": ("redis",)}
# Entry-point groups that the closure's libraries load by themselves: any distribution that declares
# one is executed by the worker, so it joins the closure.
PLUGIN_GROUP_PREFIXES = ("celery", "kombu")
# Install-time bookkeeping, not code: differs between installers (pip/uv) and machines.
_INSTALL_METADATA = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json"}
_DOMAIN = b"cscore simulated worker measurement v2\x00"
_CODE_DOMAIN = b"cscore code measurement v1\x00"


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _frame(digest: hashlib._Hash, *parts: bytes) -> None:
    for part in parts:  # length-prefixed, so no two sequences of parts hash alike
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)


def _file_sha256(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _hash_files(named: Iterable[tuple[str, Path]], rewrite: dict[bytes, bytes] | None = None) -> bytes:
    """SHA-256 over sorted (name, SHA-256 of content) pairs; a missing file hashes as ``missing``."""
    items = sorted(named)

    def one(path: Path) -> bytes:
        if rewrite:
            data = path.read_bytes()
            for old, new in rewrite.items():
                data = data.replace(old, new)
            return hashlib.sha256(data).digest()
        return _file_sha256(path)

    def safe(path: Path) -> bytes:
        try:
            return one(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return b"missing"

    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL on large buffers
        digests = list(pool.map(safe, [p for _, p in items]))
    total = hashlib.sha256()
    for (name, _), d in zip(items, digests, strict=True):
        _frame(total, name.encode(), d)
    return total.digest()


def trusted_code_digest(root: Path | None = None) -> bytes:
    """48-byte SHA-384 over the trusted code under ``root`` (default: this checkout)."""
    root = Path(root) if root is not None else _repo_root()
    files = sorted(
        (p.relative_to(root).as_posix(), p)
        for folder in MEASURED_FOLDERS
        for p in (root / folder).rglob("*.py")  # nothing for a folder that is missing (Python 3.11's glob)
        if "__pycache__" not in p.parts
    )
    digest = hashlib.sha384(_CODE_DOMAIN)
    for rel, path in files:
        _frame(digest, rel.encode(), path.read_bytes())
    return digest.digest()


# -- the closure ----------------------------------------------------------------------------------------


def _search_path() -> list[str]:
    """``sys.path`` less a source checkout: its build by-products (``cscore.egg-info``) are not installed code.

    (In the worker image the trusted packages sit in site-packages itself, which stays.)"""
    repo = _repo_root()
    if not (repo / "pyproject.toml").is_file():
        return [p for p in sys.path if p]
    return [p for p in sys.path if p and os.path.realpath(p) != os.path.realpath(repo)]


def _discover(name: str | None = None) -> Iterator[metadata.Distribution]:
    """The distributions on the search path as the standard library's path finder reads them. Not through every
    finder on ``sys.meta_path``: importing Airflow installs importlib_metadata's backport ahead of it, whose
    ``files`` drops the RECORD entries that are missing, and the measurement would depend on what was imported."""
    context = metadata.DistributionFinder.Context(name=name, path=_search_path())
    return iter(metadata.MetadataPathFinder.find_distributions(context))


def _distribution(name: str) -> metadata.Distribution:
    found = next(_discover(name), None)
    if found is None:
        raise metadata.PackageNotFoundError(name)
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_names(root: Path | None = None) -> set[str]:
    """Top-level module names imported by the trusted code that are neither stdlib nor trusted code."""
    root = Path(root) if root is not None else _repo_root()
    names: set[str] = set()
    for folder in MEASURED_FOLDERS:
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in MEASURED_FOLDERS}


def closure_distributions(root: Path | None = None) -> list[metadata.Distribution]:
    """The installed distributions the worker runs, sorted by name (the project's own excluded).

    Raises LookupError naming the module when an import of the trusted code has no installed
    distribution (the closure would be incomplete)."""
    by_module = metadata.packages_distributions()
    wanted: dict[str, set[str]] = {}
    for module in sorted(imported_top_level_names(root)):
        dists = by_module.get(module)
        if not dists:
            raise LookupError(f"the trusted code imports {module!r}, which no installed distribution provides: "
                              "install the locked dependencies (`make setup`)")
        for d in dists:
            wanted.setdefault(_normalise(d), set()).update(ROOT_EXTRAS.get(_normalise(d), ()))
    for dist in _discover():
        if any(ep.group.startswith(PLUGIN_GROUP_PREFIXES) for ep in dist.entry_points):
            wanted.setdefault(_normalise(dist.name), set())
    found: dict[str, metadata.Distribution] = {}
    queue = [(name, extras) for name, extras in wanted.items()]
    while queue:
        name, extras = queue.pop()
        if name == PROJECT_DISTRIBUTION:
            continue
        dist = found.get(name) or _distribution(name)
        known = found.get(name) is not None
        found[name] = dist
        if known and not extras:
            continue
        for req in (Requirement(r) for r in dist.requires or ()):
            if _requirement_applies(req, extras):
                queue.append((_normalise(req.name), set(req.extras)))
    return [found[n] for n in sorted(found)]


def _requirement_applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = {k: str(v) for k, v in default_environment().items()}
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def _distribution_files(dist: metadata.Distribution) -> Iterator[tuple[str, Path]]:
    for f in dist.files or ():
        # Scripts outside site-packages (``../../bin``) carry this venv's path in their shebang; the worker
        # runs ``python -m``, never them.
        if f.name in _INSTALL_METADATA or "__pycache__" in f.parts or f.suffix == ".pyc" or ".." in f.parts:
            continue
        yield f.as_posix(), Path(str(dist.locate_file(f)))


def _distribution_digest(dist: metadata.Distribution) -> bytes:
    version = dist.version  # parses METADATA: once, not per file
    return _hash_files([(f"{version}/{name}", path) for name, path in _distribution_files(dist)])


def _project_digest(root: Path) -> bytes:
    """The project's own installed files (the editable finder, run at start-up), checkout path as ``<root>``."""
    try:
        dist = _distribution(PROJECT_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return b"not installed"
    return _hash_files(list(_distribution_files(dist)), rewrite={str(root).encode(): b"<root>"})


def _python_components() -> list[tuple[str, bytes]]:
    binary = Path(os.path.realpath(sys.executable))
    files = [("executable", binary)]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        lib = Path(str(sysconfig.get_config_var("LIBDIR"))) / str(sysconfig.get_config_var("LDLIBRARY"))
        files.append(("libpython", lib))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    std_files = []
    for folder, subdirs, names in os.walk(stdlib):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        rel = Path(folder).relative_to(stdlib)
        std_files += [((rel / n).as_posix(), Path(folder, n)) for n in names]
    return [("python:version", hashlib.sha256(f"{sys.implementation.cache_tag} {sys.version}".encode()).digest()),
            ("python:binary", _hash_files(files)),
            ("python:stdlib", _hash_files(std_files))]


def _startup_components() -> list[tuple[str, bytes]]:
    """``.pth`` files on every ``sys.path`` directory and site directory, and site/user customisation."""
    dirs = [*sys.path, *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    pths: dict[str, list[Path]] = {}
    for d in dict.fromkeys(os.path.realpath(d) for d in dirs if d):
        if os.path.isdir(d):
            for p in sorted(Path(d).glob("*.pth")):
                pths.setdefault(p.name, []).append(p)
    out = [(f"pth:{name}#{i}", _hash_files([(name, p)])) for name, paths in sorted(pths.items())
           for i, p in enumerate(paths)]
    for module in ("sitecustomize", "usercustomize"):
        spec = importlib.machinery.PathFinder.find_spec(module)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        out.append((f"startup:{module}", b"absent" if origin is None else _hash_files([(module, origin)])))
    return out


def _import_components(dists: list[metadata.Distribution]) -> list[tuple[str, bytes]]:
    """For each top-level name a closure distribution provides: is it resolved from that distribution?"""
    out = []
    for dist in dists:
        owned = {str(dist.locate_file(f)) for f in dist.files or ()}
        # A path through ``..`` is no package's; isidentifier() drops the .dist-info/.data folders and .pth files.
        tops = {f.parts[0].removesuffix(".py") for f in dist.files or () if f.parts and ".." not in f.parts}
        for name in sorted(t for t in tops if t.isidentifier()):
            # The path search itself, not sys.modules: what a fresh worker would import, whatever is loaded here.
            spec = importlib.machinery.PathFinder.find_spec(name)
            origin = spec.origin if spec is not None else None
            if spec is not None and origin is None:  # a namespace package: every portion must be the dist's
                portions = list(spec.submodule_search_locations or ())
                where = "namespace:" + ",".join("own" if any(o.startswith(p) for o in owned) else p for p in portions)
            else:
                where = "absent" if origin is None else "own" if origin in owned else f"elsewhere:{origin}"
            out.append((f"import:{name}", hashlib.sha256(where.encode()).digest()))
    return out


@functools.cache
def _closure_components() -> tuple[tuple[str, bytes], ...]:
    dists = closure_distributions()
    return (*_python_components(),
            *((f"dist:{_normalise(d.name)}", _distribution_digest(d)) for d in dists),
            ("dist:cscore (own install)", _project_digest(_repo_root())),
            *_startup_components(),
            *_import_components(dists))


def measurement_components(root: Path | None = None) -> list[tuple[str, bytes]]:
    """(label, digest) for every component, in measurement order; ``root`` changes trusted-code only."""
    return [("trusted-code", trusted_code_digest(root)), *_closure_components()]


def _combine(components: list[tuple[str, bytes]]) -> bytes:
    digest = hashlib.sha384(_DOMAIN)
    for label, value in components:
        _frame(digest, label.encode(), value)
    return digest.digest()


@functools.cache
def _default_measurement() -> bytes:
    return _combine(measurement_components())


def code_measurement(root: Path | None = None) -> bytes:
    """48-byte SHA-384 measurement of the simulated worker (see the module docstring).

    ``root`` (default: this checkout) is where the trusted code is read; the rest is this interpreter's
    closure. Cached per process for the default root."""
    if root is None:
        return _default_measurement()
    return _combine(measurement_components(root))
