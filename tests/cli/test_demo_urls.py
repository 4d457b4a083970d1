"""`cscore demo` says the stack's URLs while the stack is up, and at the end only when --keep leaves it up: never
URLs of a stack it already stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

import cscore.demo
from cscore.cli import _parser, cmd_demo
from cscore.demo import DemoReport, on_demo_stack

URLS = {"CSCORE_AIRFLOW_URL": "http://127.0.0.1:8793", "CSCORE_S3_ENDPOINT": "http://127.0.0.1:5111"}
_said: list[str] = []  # what the demo said and the stack did, in order


class _Stack:
    """A local stack that only records its start and stop."""

    def __init__(self, state_dir: Path, *, workers: int, airflow: bool, out: object, fresh: bool) -> None:
        self.state_dir, self.env = state_dir, dict(URLS)
        _said.append(f"fresh={fresh}")

    def start(self) -> None:
        _said.append("started")

    def stop(self) -> None:
        _said.append("stopped")


@pytest.mark.parametrize("keep", [False, True])
def test_the_urls_are_said_while_the_stack_is_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 keep: bool) -> None:
    for name in URLS:
        monkeypatch.setenv(name, "before")  # on_demo_stack exports the stack's variables: restored afterwards
    monkeypatch.setattr(cscore.demo, "LocalStack", _Stack)
    _said.clear()
    on_demo_stack(tmp_path, lambda stack, say: _said.append("ran"), workers=1, keep=keep, say=_said.append)
    with_urls = [i for i, line in enumerate(_said) if all(url in line for url in URLS.values())]
    assert len(with_urls) == 1 and _said.index("started") < with_urls[0] < _said.index("ran")
    assert ("stopped" in _said) is not keep
    assert _said[0] == "fresh=True"  # each demo on a state of its own: an earlier run's is set aside


def _report(tmp_path: Path, findings: tuple[str, ...] = ()) -> DemoReport:
    return DemoReport("b-1", 10, 3, 1.0, 1.0, 2.0, 5.0, "ab" * 48, 7, list(findings), URLS["CSCORE_S3_ENDPOINT"],
                      URLS["CSCORE_AIRFLOW_URL"], str(tmp_path), confusion={"tp": 3, "fp": 0, "fn": 0, "tn": 7},
                      probabilities=[0.1] * 7 + [0.9] * 3)


@pytest.mark.parametrize("keep", [False, True])
def test_the_summary_names_urls_only_of_a_stack_still_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], keep: bool) -> None:
    monkeypatch.setattr(cscore.demo, "run_demo", lambda *a, **k: _report(tmp_path))
    args = _parser("demo").parse_args(["demo", *(["--keep"] if keep else [])])
    args.state_dir = tmp_path
    assert cmd_demo(args) == 0
    out = capsys.readouterr().out
    last = out.splitlines()[-1]
    if keep:
        assert all(url in out for url in URLS.values())
        assert last == (f"state directory {tmp_path}  (stack still up: `cscore stack stop --state-dir {tmp_path}` "
                        "when done)")
    else:
        assert not any(url in out for url in URLS.values()), out
        assert last == (f"state directory {tmp_path}  (stack stopped: its Airflow UI and S3 endpoint no longer answer; "
                        "--keep leaves it up)")


@pytest.mark.parametrize("json_out", [False, True])
def test_a_demo_whose_audit_does_not_hold_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], json_out: bool) -> None:
    """docs/CLI.md: 1 when the work ran and its outcome is negative, an audit that does not hold among them."""
    problem = "receipt: receipt results/acme/b-0/shard-00000.receipt.jws is in the log but no longer in storage"
    monkeypatch.setattr(cscore.demo, "run_demo", lambda *a, **k: _report(tmp_path, (problem,)))
    args = _parser("demo").parse_args(["demo", *(["--json"] if json_out else [])])
    args.state_dir = tmp_path
    assert cmd_demo(args) == 1
    assert problem in capsys.readouterr().out
