"""enclave.measurement's closure (distributions by actual content, no Airflow); start-up refusals: test_startup.py."""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import sys
from pathlib import Path

import importlib_metadata
import pytest

from enclave import measurement


def test_the_closure_holds_the_workers_libraries_and_nothing_of_the_platform_or_clients() -> None:
    names = {measurement._normalise(d.name) for d in measurement.closure_distributions()}
    assert {"cryptography", "pyarrow", "onnxruntime", "numpy", "celery", "kombu", "redis", "joserfc",
            "httpx", "boto3"} <= names
    # Training (enclave.training, issue 16) runs in the enclave: its libraries are measured too; the scoring
    # path never imports them (tests/enclave/test_training_task.py).
    assert {"scikit-learn", "skl2onnx"} <= names
    assert not names & {"apache-airflow", "fastapi", "uvicorn", "moto", "cscore", "cel-python", "psycopg"}


def _fake_distribution(site: Path, body: str) -> metadata.Distribution:
    (site / "fakepkg").mkdir(parents=True, exist_ok=True)
    (site / "fakepkg" / "__init__.py").write_text(body)
    info = site / "fakepkg-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    # RECORD's own hashes are stale on purpose: the measurement must read the files, not trust RECORD.
    (info / "RECORD").write_text("fakepkg/__init__.py,sha256=AAAA,1\nfakepkg-1.0.dist-info/METADATA,,\n"
                                 "fakepkg-1.0.dist-info/RECORD,,\n")
    return metadata.PathDistribution(info)


def test_a_distribution_is_measured_by_its_files_actual_content(tmp_path: Path) -> None:
    base = measurement._distribution_digest(_fake_distribution(tmp_path, "X = 1\n"))
    assert measurement._distribution_digest(_fake_distribution(tmp_path, "X = 1\n")) == base
    assert measurement._distribution_digest(_fake_distribution(tmp_path, "X = 2\n")) != base  # RECORD unchanged


def test_components_are_labelled_without_machine_paths() -> None:
    labels = [label for label, _ in measurement.measurement_components()]
    assert labels[:4] == ["trusted-code", "python:version", "python:binary", "python:stdlib"]
    assert "dist:pyarrow" in labels and any(label.startswith("pth:") for label in labels)
    assert not [label for label in labels if "/" in label]


# -- the closure's parts, each on a tree or a distribution built here -------------------------------------------

def _checkout(root: Path, sources: dict[str, str]) -> Path:
    """A checkout at ``root``: a pyproject.toml and these files (relative path -> text)."""
    (root / "pyproject.toml").parent.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for rel, text in sources.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_search_path_leaves_out_the_checkout_and_empty_entries(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    repo, other, link = _checkout(tmp_path / "repo", {}), tmp_path / "site", tmp_path / "link"
    link.symlink_to(repo)  # the checkout under another spelling is the checkout
    monkeypatch.setattr(measurement, "_repo_root", lambda: repo)
    monkeypatch.setattr("sys.path", ["", str(repo), str(other), str(link)])
    assert measurement._search_path() == [str(other)]
    (repo / "pyproject.toml").unlink()  # an installed worker image: its folder is site-packages itself, kept
    assert measurement._search_path() == [str(repo), str(other), str(link)]


def test_a_distribution_only_in_the_checkout_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _checkout(tmp_path / "repo", {})
    _fake_distribution(repo, "X = 1\n")  # build by-products (cscore.egg-info) sit in the checkout like this
    monkeypatch.setattr(measurement, "_repo_root", lambda: repo)
    monkeypatch.setattr("sys.path", [str(repo)])
    with pytest.raises(metadata.PackageNotFoundError) as err:
        measurement._distribution("fakepkg")
    assert err.value.name == "fakepkg"
    _fake_distribution(tmp_path / "site", "X = 2\n")
    monkeypatch.setattr("sys.path", [str(repo), str(tmp_path / "site")])
    assert measurement._distribution("fakepkg").locate_file("fakepkg/__init__.py").read_text() == "X = 2\n"


def test_distribution_names_are_normalised_as_in_pep_503() -> None:
    assert [measurement._normalise(n) for n in ("Scikit_Learn", "zope.interface", "a-_.b", "plain")] == [
        "scikit-learn", "zope-interface", "a-b", "plain"]


def test_the_imports_are_read_from_the_trusted_code_under_the_root_given(tmp_path: Path) -> None:
    root = _checkout(tmp_path, {
        "enclave/a.py": "import fakemod.sub, os\nfrom attestation import x\nfrom . import sibling\n",
        "tasks/deep/b.py": "from otherlib.part import y\nimport wire.z\n",
        "sdk/c.py": "import notmeasured\n"})
    assert measurement.imported_top_level_names(root) == {"fakemod", "otherlib"}
    (root / "wire").mkdir()
    (root / "wire" / "bad.py").write_text("import (\n")
    with pytest.raises(SyntaxError) as err:
        measurement.imported_top_level_names(root)
    assert err.value.filename == str(root / "wire" / "bad.py")


def test_an_import_no_installed_distribution_provides_is_refused_by_name(tmp_path: Path) -> None:
    root = _checkout(tmp_path, {"enclave/a.py": "import cscore_no_such_module\n"})
    with pytest.raises(LookupError) as err:
        measurement.closure_distributions(root)
    assert str(err.value) == ("the trusted code imports 'cscore_no_such_module', which no installed distribution "
                              "provides: install the locked dependencies (`make setup`)")


def _installed(site: Path, name: str, requires: tuple[str, ...] = (), entry_points: str = "") -> None:
    """An installed distribution ``name`` in ``site`` providing the module of that name."""
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("")
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
                                            *(f"Requires-Dist: {r}\n" for r in requires)]))
    (info / "RECORD").write_text(f"{name}/__init__.py,,\n{name}-1.0.dist-info/METADATA,,\n")
    if entry_points:
        (info / "entry_points.txt").write_text(entry_points)


def test_the_closure_follows_requirements_their_extras_and_markers_and_plugins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From what the trusted code imports: each requirement whose marker holds, an extra's requirements only where
    the extra is asked for (Celery's Redis extra always), every distribution plugging into Celery or Kombu, never
    the project itself. Epsilon is reached without an extra first, then with one: its extra still counts."""
    site = tmp_path / "site"
    _installed(site, "alpha", ("beta", "epsilon", "gamma; extra == 'fast'", "delta; python_version < '3'",
                               "theta; python_version >= '3'", "cscore"))
    _installed(site, "beta", ("epsilon[fast]", "alpha"))  # a cycle: each distribution is walked once
    _installed(site, "epsilon", ("zeta; extra == 'fast'", "eta; extra == 'slow'"))
    _installed(site, "celery", ("redis; extra == 'redis'", "sqs; extra == 'sqs'"))
    for name in ("gamma", "delta", "zeta", "eta", "theta", "redis", "sqs", "unrelated"):
        _installed(site, name)
    _installed(site, "plug", entry_points="[kombu.transports]\nx = plug:T\n")
    _installed(site, "cliplug", entry_points="[console_scripts]\nx = cliplug:main\n")
    monkeypatch.setattr("sys.path", [str(site)])
    root = _checkout(tmp_path / "repo", {"enclave/a.py": "import alpha\nimport celery\n"})
    assert [d.name for d in measurement.closure_distributions(root)] == [
        "alpha", "beta", "celery", "epsilon", "plug", "redis", "theta", "zeta"]


def _digest_of(files: dict[str, bytes | None]) -> bytes:
    """The measurement's digest of named contents, restated: SHA-256 over the names in order, each name and its
    content's SHA-256 (``missing`` for a file that is not there: None) prefixed by their lengths (8 bytes,
    big-endian)."""
    total = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        for part in (name.encode(), b"missing" if content is None else hashlib.sha256(content).digest()):
            total.update(len(part).to_bytes(8, "big") + part)
    return total.digest()


def test_the_interpreter_is_measured_by_its_binary_and_its_standard_library_less_packages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stdlib = tmp_path / "lib"
    for rel, text in {"os.py": "a", "json/__init__.py": "b", "__pycache__/os.pyc": "c", "site-packages/x.py": "d",
                      "dist-packages/y.py": "e", "json/__pycache__/z.pyc": "f"}.items():
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_text(text)
    (tmp_path / "python3").write_bytes(b"binary")
    monkeypatch.setattr("sys.executable", str(tmp_path / "python3"))
    monkeypatch.setattr(measurement.sysconfig, "get_paths", lambda: {"stdlib": str(stdlib)})
    monkeypatch.setattr(measurement.sysconfig, "get_config_var", lambda name: 0)
    version = f"{sys.implementation.cache_tag} {sys.version}".encode()
    assert measurement._python_components() == [
        ("python:version", hashlib.sha256(version).digest()),
        ("python:binary", _digest_of({"executable": b"binary"})),
        ("python:stdlib", _digest_of({"os.py": b"a", "json/__init__.py": b"b"}))]
    (tmp_path / "libpython3.so").write_bytes(b"shared")
    config = {"Py_ENABLE_SHARED": 1, "LIBDIR": str(tmp_path), "LDLIBRARY": "libpython3.so"}
    monkeypatch.setattr(measurement.sysconfig, "get_config_var", config.get)
    assert measurement._python_components()[1] == (
        "python:binary", _digest_of({"executable": b"binary", "libpython": b"shared"}))


def test_start_up_hooks_are_measured_by_content_wherever_they_sit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, user = tmp_path / "first", tmp_path / "second", tmp_path / "user"
    for folder, files in ((first, {"a.pth": "1", "b.pth": "2", "sitecustomize.py": "3", "c.txt": "4"}),
                          (second, {"a.pth": "5"}), (user, {"d.pth": "6"})):
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    monkeypatch.setattr("sys.path", [str(first), "", str(tmp_path / "missing"), str(first)])
    monkeypatch.setattr(measurement.site, "getsitepackages", lambda: [str(second)])
    monkeypatch.setattr(measurement.site, "getusersitepackages", lambda: str(user))
    monkeypatch.setattr(measurement.site, "ENABLE_USER_SITE", True)
    assert measurement._startup_components() == [
        ("pth:a.pth#0", _digest_of({"a.pth": b"1"})), ("pth:a.pth#1", _digest_of({"a.pth": b"5"})),
        ("pth:b.pth#0", _digest_of({"b.pth": b"2"})), ("pth:d.pth#0", _digest_of({"d.pth": b"6"})),
        ("startup:sitecustomize", _digest_of({"sitecustomize": b"3"})), ("startup:usercustomize", b"absent")]
    monkeypatch.setattr(measurement.site, "ENABLE_USER_SITE", False)
    assert "pth:d.pth#0" not in dict(measurement._startup_components())


def test_each_top_level_name_of_the_closure_is_resolved_from_its_own_distribution(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site, shadow = tmp_path / "site", tmp_path / "shadow"
    _installed(site, "alpha")
    (site / "beta.py").write_text("")
    (site / "spaced" / "part").mkdir(parents=True)
    (site / "spaced" / "part" / "m.py").write_text("")
    ((site / "alpha-1.0.dist-info") / "RECORD").write_text(
        "alpha/__init__.py,,\nbeta.py,,\nspaced/part/m.py,,\ngone.py,,\nnot-an-id.py,,\nalpha-1.0.dist-info/METADATA,,\n"
        "alpha.pth,,\n../../bin/tool,,\nstray/../beta.py,,\n,,\n")
    dist = metadata.PathDistribution(site / "alpha-1.0.dist-info")
    monkeypatch.setattr("sys.path", [str(site)])

    assert dict(measurement._import_components([dist])) == {
        f"import:{name}": hashlib.sha256(text.encode()).digest()
        for name, text in (("alpha", "own"), ("beta", "own"), ("gone", "absent"), ("spaced", "namespace:own"))}
    shadow.mkdir()
    (shadow / "beta.py").write_text("")
    (shadow / "spaced").mkdir()
    monkeypatch.setattr("sys.path", [str(shadow), str(site)])
    assert dict(measurement._import_components([dist])) == {
        f"import:{name}": hashlib.sha256(text.encode()).digest()
        for name, text in (("alpha", "own"), ("beta", f"elsewhere:{shadow / 'beta.py'}"), ("gone", "absent"),
                           ("spaced", f"namespace:{shadow / 'spaced'},own"))}


def test_the_projects_own_install_is_measured_with_its_checkout_path_as_root(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    site, checkout = tmp_path / "site", tmp_path / "checkout"
    _installed(tmp_path / "first", "aaa")  # another distribution, found first on the path
    monkeypatch.setattr("sys.path", [str(tmp_path / "first"), str(site)])
    assert measurement._project_digest(checkout) == b"not installed"
    _installed(site, "cscore")
    (site / "cscore" / "__init__.py").write_text(f"PATH = '{checkout}' + '{checkout}'\n")
    with (site / "cscore-1.0.dist-info" / "RECORD").open("a") as record:
        record.write("cscore/gone.py,,\n")  # listed, not installed
    expected = _digest_of({
        "cscore/__init__.py": b"PATH = '<root>' + '<root>'\n", "cscore/gone.py": None,
        "cscore-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: cscore\nVersion: 1.0\n"})
    assert measurement._project_digest(checkout) == expected
    # The same with importlib_metadata's finder first on sys.meta_path, as importing Airflow puts it (it skips the
    # RECORD entries that are missing): what was imported before must not change the measurement.
    monkeypatch.setattr("sys.meta_path", [importlib_metadata.MetadataPathFinder, *sys.meta_path])
    backport = next(iter(importlib_metadata.Distribution.discover(name="cscore", path=[str(site)])))
    assert "cscore/gone.py" not in [str(f) for f in backport.files or ()]  # what that finder alone would measure
    assert measurement._project_digest(checkout) == expected


def test_the_trusted_code_digest_is_its_python_files_by_path_and_content(tmp_path: Path) -> None:
    """SHA-384 under its own domain over each ``*.py`` of the four measured folders, sorted by path, each path and
    content length-prefixed; compiled caches and other folders are not code the worker runs from here."""
    root = _checkout(tmp_path, {"wire/z.py": "Z = 1\n", "enclave/b.py": "B = 2\n", "enclave/a/x.py": "X\n",
                                "attestation/__pycache__/c.py": "no\n", "tasks/n.txt": "no\n", "sdk/s.py": "no\n"})
    expected = hashlib.sha384(b"cscore code measurement v1\x00")
    for rel, text in (("enclave/a/x.py", b"X\n"), ("enclave/b.py", b"B = 2\n"), ("wire/z.py", b"Z = 1\n")):
        for part in (rel.encode(), text):
            expected.update(len(part).to_bytes(8, "big") + part)
    assert measurement.trusted_code_digest(root) == expected.digest()
    nothing = hashlib.sha384(b"cscore code measurement v1\x00").digest()
    assert measurement.trusted_code_digest(tmp_path / "none") == nothing  # no measured folder there


def test_a_distribution_is_measured_by_what_it_installed_less_bookkeeping_and_caches(tmp_path: Path) -> None:
    dist = _fake_distribution(tmp_path, "X = 1\n")
    (tmp_path / "fakepkg" / "b.py").write_text("B\n")
    (tmp_path / "fakepkg-1.0.dist-info" / "RECORD").write_text(
        "fakepkg-1.0.dist-info/INSTALLER,,\nfakepkg/__pycache__/m.cpython-311.opt-1.txt,,\nfakepkg/stray.pyc,,\n"
        "../../bin/fake,,\nfakepkg-1.0.dist-info/RECORD,,\nfakepkg/__init__.py,,\nfakepkg-1.0.dist-info/METADATA,,\n"
        "fakepkg/b.py,,\n")
    assert measurement._distribution_digest(dist) == _digest_of({
        "1.0/fakepkg/__init__.py": b"X = 1\n", "1.0/fakepkg/b.py": b"B\n",
        "1.0/fakepkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n"})
