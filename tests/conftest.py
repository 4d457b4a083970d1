"""Every test runs isolated from the user's state and from other tests' environment variables.

Why: `make demo` leaves `.state/demo/stack.env`; an in-process command that fell back to that default
copied its variables into `os.environ` (`CSCORE_BROKER_CA` among them) and later tests failed.
So each test sees `CSCORE_STATE_DIR` pointing at an empty temporary folder, and a test that leaves
`os.environ` changed fails (the environment is restored either way). Fixtures of wider scope that set
variables for a module (tests/e2e) are set up before this one, so their variables are not leaks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline in any property test: one example descheduled 200 ms on a busy machine fails the run.
settings.register_profile("cscore", deadline=None)
settings.load_profile("cscore")

LEAK_MESSAGE = "this test left os.environ changed (use monkeypatch.setenv, or restore it): "


@pytest.fixture(autouse=True)
def _isolated_environment(request: pytest.FixtureRequest,
                          tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    saved = dict(os.environ)
    # A fresh empty folder per test: nothing of the user's, nothing another test wrote. End-to-end tests
    # keep their module stack's own state dir (set by its fixture, which removes it afterwards).
    if request.node.get_closest_marker("e2e") is None:
        os.environ["CSCORE_STATE_DIR"] = str(tmp_path_factory.mktemp("state", numbered=True))
    expected = dict(os.environ)
    yield
    changed = sorted(k for k in set(os.environ) | set(expected)
                     if os.environ.get(k) != expected.get(k) and not k.startswith("PYTEST_"))  # pytest's own
    for name in set(os.environ) | set(saved):
        if name.startswith("PYTEST_"):
            continue
        if name in saved:
            os.environ[name] = saved[name]
        else:
            del os.environ[name]
    if changed:
        pytest.fail(LEAK_MESSAGE + ", ".join(changed), pytrace=False)


@pytest.fixture(scope="session")
def owner_inputs() -> Path:
    """The shared owner-input fixtures (`shared/fixtures/owner-inputs`, beside or above the repository)."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [base / "shared" / "fixtures" / "owner-inputs" for base in (repo, *repo.parents)]
    found = next((c for c in candidates if (c / "README.md").is_file()), None)
    if found is None:
        pytest.fail(f"owner-input fixtures not found: expected shared/fixtures/owner-inputs/README.md in {repo} or "
                    "a folder above it (the project's shared folder, ../shared for /work/main)", pytrace=False)
    return found
