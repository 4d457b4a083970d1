"""Tests never read the user's state (`make demo` leaves `.state/demo/stack.env`) and never leak
environment variables into each other: tests/conftest.py's autouse fixture, checked here."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from audit.cli import _state_dir as audit_state_dir
from cscore.cli import default_state_dir, main

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).with_name("conftest.py")


def test_commands_default_to_an_empty_state_dir_of_this_test(tmp_path_factory: pytest.TempPathFactory) -> None:
    state = Path(os.environ["CSCORE_STATE_DIR"])
    assert state.is_relative_to(tmp_path_factory.getbasetemp()) and not any(state.iterdir())
    assert default_state_dir() == state
    assert audit_state_dir(argparse.Namespace()) == state


def test_a_demo_state_in_the_working_directory_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `make demo` leaves behind; the in-process command below once copied it into os.environ.
    demo = tmp_path / ".state" / "demo"
    demo.mkdir(parents=True)
    (demo / "stack.env").write_text("CSCORE_BROKER_CA=/leaked/ca.pem\nCSCORE_PROVIDER_BROKER_URL=http://127.0.0.1:9\n")
    monkeypatch.chdir(tmp_path)
    for name in ("CSCORE_BROKER_CA", "CSCORE_PROVIDER_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["provider", "key"]) == 2  # no broker URL: it never saw the demo's stack.env
    assert "CSCORE_BROKER_CA" not in os.environ and "CSCORE_PROVIDER_BROKER_URL" not in os.environ


def test_a_test_that_leaves_the_environment_changed_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import os

        def test_leaks():
            os.environ["CSCORE_LEAKED"] = "1"

        def test_after():
            assert "CSCORE_LEAKED" not in os.environ
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*this test left os.environ changed*CSCORE_LEAKED*"])
