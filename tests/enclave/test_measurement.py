"""enclave.measurement's closure (distributions by actual content, no Airflow) and enclave.startup's refusals."""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from enclave import measurement
from enclave.startup import (
    NATIVE_STARTUP_VARIABLES,
    PYTHON_STARTUP_VARIABLES,
    UnsafeStartup,
    refuse_unsafe_startup,
    startup_problems,
)

SAFE = SimpleNamespace(ignore_environment=0, safe_path=True, optimize=0, inspect=0)


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


def test_an_honest_start_up_has_no_problem() -> None:
    assert startup_problems({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin"},
                            SAFE) == []


@pytest.mark.parametrize("name", PYTHON_STARTUP_VARIABLES + NATIVE_STARTUP_VARIABLES)
def test_each_startup_variable_is_refused_by_name(name: str) -> None:
    with pytest.raises(UnsafeStartup, match=f"{name} is set") as refused:
        refuse_unsafe_startup({name: "/somewhere/secret-value"}, SAFE)
    assert "secret-value" not in str(refused.value)


def test_ignore_environment_makes_python_variables_inert_but_not_the_loaders() -> None:
    ignoring = SimpleNamespace(**{**vars(SAFE), "ignore_environment": 1})
    assert startup_problems({"PYTHONPATH": "/x", "PYTHONSTARTUP": "/y"}, ignoring) == []
    assert startup_problems({"LD_PRELOAD": "/x.so"}, ignoring) == ["LD_PRELOAD is set (it loads native code into "
                                                                    "the worker)"]


@pytest.mark.parametrize(("flag", "words"), [("safe_path", "PYTHONSAFEPATH off"), ("optimize", "-O"),
                                             ("inspect", "-i")])
def test_unsafe_interpreter_flags_are_refused(flag: str, words: str) -> None:
    flags = SimpleNamespace(**{**vars(SAFE), flag: not getattr(SAFE, flag)})
    assert any(words in p for p in startup_problems({}, flags))


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
    _installed(site, "alpha", ("beta", "epsilon", "gamma; extra == 'fast'", "delta; python_version < '3'", "cscore"))
    _installed(site, "beta", ("epsilon[fast]",))
    _installed(site, "epsilon", ("zeta; extra == 'fast'", "eta; extra == 'slow'"))
    _installed(site, "celery", ("redis; extra == 'redis'", "sqs; extra == 'sqs'"))
    for name in ("gamma", "delta", "zeta", "eta", "redis", "sqs", "unrelated"):
        _installed(site, name)
    _installed(site, "plug", entry_points="[kombu.transports]\nx = plug:T\n")
    _installed(site, "cliplug", entry_points="[console_scripts]\nx = cliplug:main\n")
    monkeypatch.setattr("sys.path", [str(site)])
    root = _checkout(tmp_path / "repo", {"enclave/a.py": "import alpha\nimport celery\n"})
    assert [d.name for d in measurement.closure_distributions(root)] == [
        "alpha", "beta", "celery", "epsilon", "plug", "redis", "zeta"]
