"""Party commands import only what they use: not the demo, scikit-learn, Airflow, Celery or the local stack.

Why: `cscore owner results` once imported the demo (for its trust settings), hence scikit-learn and the local
stack: 6-9 s of imports before its first line of output. These tests check which modules get loaded, not time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cscore.cli

# Modules a party command has no use for; their import is what made start-up slow.
HEAVY = ("sklearn", "scipy", "airflow", "celery", "onnxruntime", "matplotlib", "infra.local.stack",
         "infra.local.parts", "infra.local.aws", "cscore.demo",
         "cscore.bench", "sdk.training", "sdk.corpus",
         # httpx's own command line client (its imports cost ~0.1 CPU s; cscore.cli keeps it out)
         "rich", "click", "pygments")
PARTY_COMMANDS = ("cmd_owner_", "cmd_provider_", "cmd_platform_", "cmd_models")


def _loaded_after(code: str) -> list[str]:
    """The module names loaded in a fresh interpreter after running `code`."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(cscore.cli.__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


@pytest.mark.parametrize("argv", [["owner", "results", "--help"], ["owner", "submit", "--help"],
                                  ["provider", "publish", "--help"], ["--help"]])
def test_help_of_party_commands_loads_no_heavy_module(argv: list[str]) -> None:
    code = (f"from cscore.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nsys.stdout.flush()")
    modules = _loaded_after(code)
    assert _heavy(modules) == []
    # The attestation verifier and the audit log are needed by `attest` and `audit` only.
    assert [m for m in modules if m.split(".")[0] in ("attestation", "audit")] == []


def test_audit_help_still_builds_its_own_commands() -> None:
    modules = _loaded_after("from cscore.cli import main\ntry:\n    main(['audit', 'verify', '--help'])\n"
                            "except SystemExit as e:\n    assert e.code == 0, e.code")
    assert "audit.cli" in modules
    assert _heavy(modules) == []


def _imports_of_party_commands() -> list[str]:
    """Every module imported by a party command's body or by a module-level helper it calls (cscore/cli.py and
    cscore/stream_cli.py)."""
    folder = Path(cscore.cli.__file__).parent
    functions = {f.name: f for name in ("cli.py", "stream_cli.py")
                 for f in ast.parse((folder / name).read_text()).body if isinstance(f, ast.FunctionDef)}
    todo = [name for name in functions if name.startswith(PARTY_COMMANDS)]
    seen: set[str] = set()
    modules: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Import):
                modules.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
                todo.append(node.func.id)
    assert {"cmd_owner_results", "cmd_owner_submit", "cmd_owner_stream", "cmd_provider_publish",
            "_submit_contract_input"} <= seen
    return sorted(modules)


def test_party_commands_import_no_heavy_module() -> None:
    imported = _imports_of_party_commands()
    assert "sdk.results" in imported and "sdk.owner" in imported
    modules = _loaded_after("import cscore.cli\n" + "\n".join(f"import {m}" for m in imported))
    assert _heavy(modules) == []


def test_the_check_sees_a_heavy_import() -> None:
    """The check itself: importing the demo (what `owner results` once did) is reported."""
    assert "cscore.demo" in _heavy(_loaded_after("import cscore.demo"))
    assert "sklearn" in _heavy(_loaded_after("import cscore.demo"))


def test_the_check_sees_httpx_command_line_client() -> None:
    """Without cscore.cli first, httpx loads its command line client's libraries: what the check reports."""
    assert "rich" in _heavy(_loaded_after("import sdk.party"))
    assert _heavy(_loaded_after("import cscore.cli\nimport sdk.party\nimport httpx\nassert callable(httpx.main)")) == []
