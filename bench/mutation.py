"""Mutation testing of the security-critical modules with mutmut: how many one-line changes do the tests catch?

A benchmark, not part of the test suite (CPU-heavy: minutes per module). For each module it copies the
tracked files of the repository into a scratch folder, configures mutmut there to mutate that one module
and to run only the tests that exercise it, runs mutmut (``nice -n 19``, one child by default), and prints
killed / total per module, with the surviving mutants' names (``mutmut show NAME`` in the scratch folder
shows the diff).

    python bench/mutation.py                       # every module below, one after another
    python bench/mutation.py audit/merkle.py       # one module
    python bench/mutation.py --list                # the modules and their tests
    python bench/mutation.py --status              # counts so far, also of a run still going
    python bench/mutation.py --by-hand MODULE      # re-test the last run's survivors with the mutant applied
                                                   # to the module's source (catches import-time code)
    python bench/mutation.py --only PATTERN --tests TEST MODULE  # some mutants, with a faster test list
    python bench/mutation.py --checks MODULE       # the hand-written mutants of its security checks
                                                   # (bench/check_mutants.py), each on disk in a scratch copy

Writes ``<workdir>/summary.json``: {module: {"killed", "survived", "timeout", "no_tests", "total",
"kill_rate", "survivors": [...]}}.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["attestation", "audit", "keybroker", "enclave", "sdk", "tasks", "cscore", "dags", "infra", "wire"]

_SNP = ["tests/attestation/test_forgery_snp.py", "tests/attestation/test_snp_verify.py",
        "tests/attestation/test_snp_report.py", "tests/attestation/test_simulated_and_evidence.py"]
_TDX = ["tests/attestation/test_forgery_tdx.py", "tests/attestation/test_tdx_quote.py",
        "tests/attestation/test_tdx_evidence.py"]
_BROKER = ["tests/keybroker/test_tables_clock.py", "tests/keybroker/test_forgery.py", "tests/keybroker/test_logic.py",
           "tests/keybroker/test_limits.py"]
# module -> the fast, in-process tests that exercise it (no broker processes, no LocalStack)
MODULES: dict[str, list[str]] = {
    "attestation/anchors.py": [*_SNP, *_TDX],
    "attestation/evidence.py": [*_SNP, *_TDX],
    "attestation/snp/verify.py": _SNP,
    # the parser's own tests and the verifier's on real reports: _SNP builds simulated hierarchies (seconds a mutant)
    "attestation/snp/report.py": ["tests/attestation/test_snp_report.py", "tests/attestation/test_snp_verify.py"],
    # the hierarchy field by field with key generation recorded and answered from one cached hierarchy (a second
    # in all); the scratch conftest's warm-up builds a hierarchy before the fork, so the tests call it themselves
    "attestation/simulated.py": ["tests/attestation/test_simulated_hierarchy.py"],
    # the command word for word on real AMD and Intel evidence (milliseconds a test); not the simulated trust-dir
    # test (it generates a hierarchy in each child) nor the property test over arbitrary bytes (60 examples)
    "attestation/cli.py": ["tests/attestation/test_attestation_cli_output.py",
                           *[f"tests/attestation/test_attestation_cli.py::test_{name}" for name in (
                               "add_arguments_and_run", "raw_binary_accepted_and_policy_refuses_debug",
                               "rejections_exit_1", "unusable_input_exits_2",
                               "a_tdx_quote_without_tee_tdx_says_to_pass_it",
                               "a_tdx_header_alone_without_tee_tdx_is_named")],
                           *[f"tests/attestation/test_tdx_cli_and_tsm.py::test_{name}" for name in (
                               "raw_and_hex_quotes_are_verified", "policy_verdicts",
                               "collateral_folder_gives_a_tcb_verdict", "unusable_and_rejected_inputs")]],
    # every refusal's field, expected and actual in one sentence and one dict (milliseconds)
    "attestation/errors.py": ["tests/attestation/test_attestation_errors.py"],
    "attestation/tdx/quote.py": _TDX,
    "attestation/tdx/intel_root.py": _TDX,
    "attestation/tdx/claims.py": _TDX,
    "attestation/tdx/collateral.py": _TDX,
    "attestation/tdx/pck.py": _TDX,
    # the policy's own tests: with the broker tests as well, each mutant of PolicyEngine took a minute
    # its own tests (sealing, JWE, the public-key checks; a second in all) and the broker's forgeries that use it
    "keybroker/crypto.py": ["tests/keybroker/test_crypto.py", "tests/keybroker/test_forgery.py"],
    # the chain, the meter, grants and sealed keys in process on SQLite and PostgreSQL (seconds in all; Postgres kills
    # what SQLite lets pass: its rows' case-sensitive keys, the table it locks), the connections (targets, URLs,
    # migration, reconnecting, ping), the store's persistence tests and an unreachable server
    "keybroker/store.py": ["tests/keybroker/test_store_chain.py", "tests/keybroker/test_store_connections.py",
                           "tests/keybroker/test_store_postgres.py::test_unreachable_postgres_is_a_clear_store_error",
                           *[f"tests/keybroker/test_store_postgres.py::test_{name}[sqlite]" for name in (
                               "keys_and_broker_secrets_survive_a_restart_sealed_under_the_kek",
                               "decision_log_chain_verifies_and_refuses_update_and_delete",
                               "grants_policies_and_resources_persist",
                               "rotation_versions_persist_and_stay_sequential")]],
    "keybroker/policy.py": ["tests/keybroker/test_policy_clauses.py", "tests/keybroker/test_platform_policy.py"],
    # the configuration's refusals word for word, its secrets and TLS rules; the API bodies' field checks (in process)
    "keybroker/config.py": ["tests/keybroker/test_config.py"],
    "keybroker/models.py": ["tests/keybroker/test_models.py"],
    "keybroker/sessions.py": _BROKER,
    "keybroker/tokens.py": _BROKER,
    "keybroker/verifier.py": _BROKER,
    "audit/merkle.py": ["tests/audit/test_merkle.py", "tests/audit/test_forgery.py"],
    # the refusals built on one world kept in memory (milliseconds a test), the log forgeries, the two pure tests
    # of test_verify.py; its scenario tests and test_worker_links/test_training_audit rebuild a run each (seconds)
    "audit/verify.py": ["tests/audit/test_verify_refusals.py", "tests/audit/test_forgery.py",
                        "tests/audit/test_verify.py::test_a_sync_that_dropped_decisions_is_named_with_the_missing_ranges",
                        "tests/audit/test_verify.py::test_a_result_object_the_platform_added_is_named_under_its_batch"],
    # the log on its own (notes, checkpoints, entries, witnesses), its forgeries, the integrity refusals over one world
    "audit/log.py": ["tests/audit/test_log.py", "tests/audit/test_forgery.py", "tests/audit/test_verify_refusals.py"],
    # the report over logs written by hand with the findings given (milliseconds a test), word for word
    "audit/show.py": ["tests/audit/test_show_report.py"],
    # the commands in process, with verify_audit, the bucket and the brokers stood in for (their own tests elsewhere)
    "audit/cli.py": ["tests/audit/test_audit_cli_commands.py"],
    # not test_verify_refusals.py: its world is synced once, before mutmut forks, so no mutant reaches its sync
    "audit/collect.py": ["tests/audit/test_collect.py", "tests/audit/test_collect_reasons.py"],
    # the production app in process (tests/keybroker/inproc.py): forgeries, release logic, rotation, platform floors
    "keybroker/app.py": [*_BROKER, "tests/keybroker/test_rotation.py", "tests/keybroker/test_platform_policy.py",
                         "tests/keybroker/test_model_grant_forgery.py", "tests/keybroker/test_logged_refusals.py",
                         "tests/keybroker/test_unwrap_versions.py", "tests/keybroker/test_admin_api.py"],
    # the limits over a stand-in ASGI app (milliseconds a test), each refusal byte for byte
    "keybroker/middleware.py": ["tests/keybroker/test_middleware.py"],
    # `python -m keybroker`: the config refused before serving, what uvicorn is handed (uvicorn.run stood in for)
    "keybroker/__main__.py": ["tests/keybroker/test_main.py",
                              "tests/keybroker/test_tls.py::test_local_ca_is_kept_loopback_only_and_keys_are_private"],
    # the problem documents and what a refused request's value may echo, over a small app (milliseconds)
    "keybroker/problems.py": ["tests/keybroker/test_problems.py"],
    # the local CA's and server certificates field by field, a handshake over memory (seconds in all), and the
    # config's transport rule and the `tls` command in process; not the broker processes of test_tls.py
    "keybroker/tls.py": ["tests/keybroker/test_tls_files.py",
                         *[f"tests/keybroker/test_tls.py::test_{name}" for name in (
                             "non_loopback_bind_is_allowed_with_tls",
                             "local_ca_is_kept_loopback_only_and_keys_are_private")]],
    "sdk/results.py": ["tests/enclave/test_result_checks.py"],
    "enclave/receipts.py": ["tests/enclave/test_receipts.py"],
    "enclave/kbs_client.py": ["tests/enclave/test_kbs_client.py", "tests/enclave/test_kbs_client_transport.py",
                              "tests/keybroker/test_tls.py::test_clients_refuse_plain_http_off_loopback",
                              "tests/keybroker/test_tls.py::test_clients_accept_loopback_http_and_report_a_missing_ca"],
    # the closure's and the trusted code's tests; the scratch conftest computes code_measurement() before the fork,
    # so what only the cached closure calls (the interpreter, start-up and import components) is not reached
    "enclave/measurement.py": ["tests/enclave/test_measurement.py",
                               "tests/attestation/test_enclave_tee.py::test_code_measurement_changes_with_any_measured_code",
                               "tests/attestation/test_enclave_tee.py::test_code_measurement_of_this_checkout_is_stable"],
    "enclave/pme.py": ["tests/enclave/test_pme.py"],
    # the providers in process: configfs-tsm over a folder shaped like a report entry, the simulated SEV-SNP signer
    "enclave/tee.py": ["tests/attestation/test_enclave_tee.py", "tests/attestation/test_simulated_and_evidence.py",
                       *[f"tests/attestation/test_tdx_cli_and_tsm.py::test_configfs_{name}" for name in (
                           "tdx_guest_outblob_is_a_verifiable_quote", "unknown_provider_and_race_are_refused",
                           "get_evidence_uses_a_private_entry", "tee_is_the_kind_of_this_guests_evidence")]],
    # RangedFile against io.BytesIO over the same bytes, request counts; the shard reads through it
    "enclave/ranged.py": ["tests/enclave/test_ranged_file.py", "tests/enclave/test_ranged_input.py"],
    "enclave/worker.py": ["tests/enclave/test_worker_checks.py", "tests/enclave/test_shard_guards.py",
                          "tests/enclave/test_ranged_input.py", "tests/enclave/test_batch_keys.py",
                          "tests/enclave/test_worker_flow.py"],
    # the refusals word for word and the metrics (milliseconds), the trainings on 240 rows (a second or less each)
    "enclave/training.py": ["tests/enclave/test_training_refusals.py", "tests/enclave/test_training.py",
                            "tests/adversary/test_training_attacks.py"],
    # real keys and joserfc tokens, each refusal word for word (milliseconds a test)
    "enclave/signing.py": ["tests/enclave/test_signing.py"],
    # pure functions of an environment mapping and a flags namespace
    "enclave/startup.py": ["tests/enclave/test_startup.py"],
    # the watchdog over real onnxruntime runs (slow and memory-hungry models built in memory), seconds in all
    "enclave/limits.py": ["tests/enclave/test_limits.py"],
    # models of a few nodes or sentences built in memory: the rewrite's chunks, padding and fallback, each output kind
    # at its bounds and precision, the session cache (seconds). tests/model/test_contract.py reaches the runner too,
    # but trains the digits and spam models in every forked child (minutes a mutant under load): left out for speed
    "enclave/runner.py": ["tests/enclave/test_runner_paths.py",
                          "tests/model/test_contract.py::test_precision_rounds_the_float32_value_the_result_carries",
                          "tests/enclave/test_limits.py::test_a_sessions_results_run_within_the_limits_given"],
    # each structural check on a graph edited once, the texts left to the graph, the bits and the self-check, on
    # the model of tests/enclave/tiny_spam.py; then the runner's chunks through the rewrite (seconds in all)
    "enclave/tfidf_path.py": ["tests/enclave/test_tfidf_checks.py", "tests/enclave/test_runner_paths.py"],
    # the spam scorer on the same small model: chunks, bits, options, each schema refusal word for word (seconds)
    "enclave/scoring.py": ["tests/enclave/test_scoring_paths.py"],
    # each entry's tensor and refusals on values and images of a few pixels built in memory (milliseconds a test)
    "enclave/preprocess.py": ["tests/enclave/test_preprocess_paths.py"],
    # the wire formats (wire/): each shared by the parties that write and read it
    # the chain's hash and check on their own, the broker's store writing it, the client's paged verified read
    "wire/decision_log.py": ["tests/wire/test_decision_log.py", "tests/keybroker/test_store_chain.py",
                             "tests/keybroker/test_admin_api.py"],
    # the client's paged, verified read of the log (`decisions`, `_verified_page`) against the app in process
    "sdk/broker_admin.py": ["tests/keybroker/test_admin_api.py"],
    # grants right in every field but one against the provider's app in process, and the owner's kbs_client asking
    "wire/grant.py": ["tests/wire/test_grant.py", "tests/keybroker/test_model_grant_forgery.py",
                      "tests/enclave/test_kbs_client.py::"
                      "test_a_model_grant_is_the_owner_brokers_signed_grant_for_this_session_key"],
    # the spec's own checks and the worker's use of them (a worker built once in process), the operator's limits
    "wire/shard.py": ["tests/wire/test_shard.py", "tests/enclave/test_shard_guards.py",
                      *[f"tests/enclave/test_limits.py::test_{name}" for name in (
                          "the_operators_limits_are_parsed_strictly",
                          "a_shard_without_limits_gets_the_defaults_and_carries_the_platforms_own",
                          "a_shard_with_limits_out_of_range_is_refused_naming_the_field")]],
    # the document's parse and digest, and the brokers' grants over published configurations (in process)
    "wire/worker_config.py": ["tests/wire/test_worker_config.py", "tests/adversary/test_published_worker_config.py"],
    # the sessions' strict parse, and the enclave's receipts that carry them (milliseconds a test)
    "wire/receipt.py": ["tests/wire/test_receipt.py", "tests/enclave/test_receipts.py"],
    # both formats through the broker's app in process (rotation, versions) and the worker's result keys
    # the one error and the strict-parse helpers every format uses, through the formats' own tests (milliseconds)
    "wire/errors.py": ["tests/wire/test_errors.py", "tests/wire/test_grant.py", "tests/wire/test_worker_config.py",
                       "tests/wire/test_receipt.py", "tests/wire/test_shard.py"],
    # each refusal of the request and the approval by field, expected and actual (pure, milliseconds); a tenant's
    # registration, approval and key replacement over a bucket in memory (milliseconds a test)
    "wire/tenant.py": ["tests/wire/test_tenant.py", "tests/platform/test_tenant_registration.py"],
    # every refusal of the card and its signature by field, expected and actual (pure, milliseconds), and the
    # card's strict-field tests of tests/model (no model trained: the digits fixtures are not used by these)
    "wire/card.py": ["tests/wire/test_card.py",
                     *[f"tests/model/test_contract.py::test_{name}" for name in (
                         "a_malformed_contract_is_refused_naming_the_field", "card_fields_are_strict")]],
    # the recipe's and its card's every refusal at its bounds by field, expected and actual (pure, milliseconds)
    "wire/recipe.py": ["tests/wire/test_recipe.py"],
    # the training spec's, the metrics' and the tuned card's every refusal by field, expected and actual (pure,
    # milliseconds); not test_training_attacks.py or test_worker_flow.py, which train a model or run a worker
    "wire/training.py": ["tests/wire/test_training.py"],
    "wire/keywrap.py": ["tests/wire/test_keywrap.py", "tests/keybroker/test_unwrap_versions.py",
                        "tests/keybroker/test_rotation.py", "tests/enclave/test_batch_keys.py"],
}
# --by-hand re-tests: the in-process tests only, where a module's own list is too slow to run once per mutant
BY_HAND = {"keybroker/policy.py": ["tests/keybroker/test_policy_clauses.py"]}
# Tests that start broker or Python processes: the mutant would not run in them, so they only cost time.
DESELECT = ["tests/keybroker/test_platform_policy.py::test_simulated_tee_below_the_key_floor_is_refused",
            "tests/keybroker/test_limits.py::test_streamed_body_without_length_is_cut_at_the_limit",
            "tests/enclave/test_training.py::test_the_same_training_gives_the_same_bytes_in_every_process"]


def scratch_copy(workdir: Path, fresh: bool) -> None:
    """The repository's tracked (and untracked, not ignored) files, copied into ``workdir``. Without ``fresh``
    an earlier run's ``mutants/`` stays: mutmut resumes it, re-testing only what changed."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, workdir / name)


# Appended to the scratch copy's tests/conftest.py (never the repository's): mutmut's fork server collects the tests
# once, then forks a child per mutant. What each test process otherwise computes on first use (the code measurement,
# 15 s at a load of 15; the simulated AMD hierarchy, 8 s) is computed there, so every child inherits it.
WARMUP = '''

def pytest_collection_finish(session: pytest.Session) -> None:  # bench/mutation.py: scratch copy only
    from enclave.measurement import code_measurement
    from tests.keybroker.inproc import _hierarchy

    code_measurement()
    _hierarchy()
'''


def configure(workdir: Path, module: str, tests: list[str]) -> None:
    """Add a [tool.mutmut] table mutating ``module`` only, testing with ``tests``."""
    table = {
        "source_paths": PACKAGES, "only_mutate": [module], "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", *[f"--deselect={d}" for d in DESELECT]],
    }
    lines = ["", "[tool.mutmut]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    with (workdir / "pyproject.toml").open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    with (workdir / "tests" / "conftest.py").open("a") as fh:
        fh.write(WARMUP)


def run_module(module: str, workdir: Path, children: int, fresh: bool,
               recheck: list[str] | None = None, only: list[str] | None = None,
               tests: list[str] | None = None) -> dict[str, Any]:
    """Run mutmut on one module; returns its counts and survivors. ``recheck``: only re-test these mutants
    (an earlier run's survivors) after the tests changed; which tests cover what is collected again.
    ``only``: test just the mutants these names or fnmatch patterns match (mutmut's own filter), e.g. the
    functions that carry security checks first when the whole module would not finish. ``tests``: these tests
    instead of the module's list (a faster list for the mutants ``only`` selects)."""
    scratch_copy(workdir, fresh)
    configure(workdir, module, tests or MODULES[module])
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = [sys.executable, "-m", "mutmut"]
    started = time.monotonic()
    if recheck:
        (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # new tests: map coverage again
    subprocess.run(["nice", "-n", "19", *mutmut, "run", "--max-children", str(children), *(recheck or only or [])],
                   cwd=workdir, env=env, check=False, stdout=subprocess.DEVNULL)
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=workdir, env=env, check=False, capture_output=True)
    stats = json.loads((workdir / "mutants" / "mutmut-cicd-stats.json").read_text())
    listed = subprocess.run([*mutmut, "results"], cwd=workdir, env=env, check=False, capture_output=True,
                            text=True).stdout
    survivors = [line.split(":")[0].strip() for line in listed.splitlines() if line.strip().endswith(": survived")]
    uncovered = [line.split(":")[0].strip() for line in listed.splitlines() if line.strip().endswith(": no tests")]
    total = int(stats.get("total", 0))
    killed = int(stats.get("killed", 0))
    return {"killed": killed, "survived": int(stats.get("survived", 0)), "timeout": int(stats.get("timeout", 0)),
            "no_tests": int(stats.get("no_tests", 0)), "total": total,
            "kill_rate": round(killed / total, 3) if total else None,
            "seconds": round(time.monotonic() - started), "survivors": survivors, "uncovered": uncovered}


def _mutated_source(original: str, mutated: str, name: str) -> str:
    """``original`` with the function (or method) that mutant ``name`` mutates replaced by the mutant's body.

    ``name`` is mutmut's: ``pkg.mod.x_func__mutmut_N`` or ``pkg.mod.xǁClassǁmethod__mutmut_N``.
    """
    short = name.rsplit(".", 1)[1]
    qualified = short.rsplit("__mutmut_", 1)[0]
    path = [p for p in qualified[1:].split("ǁ") if p] if short.startswith("xǁ") else [qualified[2:]]
    mutant = next(n for n in ast.walk(ast.parse(mutated))  # methods' mutants sit in their class
                  if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == short)
    text = ast.get_source_segment(mutated, mutant, padded=True) or ""  # same nesting as the original
    text = text.replace(f"def {short}(", f"def {path[-1]}(", 1)
    scope: list[ast.stmt] = ast.parse(original).body
    for part in path[:-1]:  # a method: find its class
        scope = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == part).body
    target = next(n for n in scope if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == path[-1])
    lines = original.splitlines(keepends=True)
    start = min([target.lineno, *(d.lineno for d in target.decorator_list)]) - 1
    return "".join(lines[:start]) + text + "\n" + "".join(lines[target.end_lineno or target.lineno:])


def by_hand(module: str, workdir: Path, names: list[str]) -> dict[str, Any]:
    """Re-test mutants by applying each to the module's source and executing it into the live module (in a
    forked child per mutant, then the module's tests with ``pytest -x``). Unlike mutmut's trampolines this
    also reaches code that runs at import (tables of clauses built by a function), which mutmut reports as
    survived because the mutant is switched on only after the import. Returns {"killed", "survivors"}."""
    import importlib

    import pytest

    scratch = workdir / module.replace("/", "_").removesuffix(".py")
    original = (REPO / module).read_text()
    mutated = (scratch / "mutants" / module).read_text()
    dotted = module.removesuffix(".py").replace("/", ".")
    os.chdir(REPO)
    live = importlib.import_module(dotted)  # the only first-party import before the fork: nothing holds stale names
    killed: list[str] = []
    for name in names:
        source = _mutated_source(original, mutated, name)
        pid = os.fork()
        if pid == 0:  # the child: mutate, test, exit with pytest's code
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:
                exec(compile(source, str(REPO / module), "exec"), live.__dict__)
                code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *BY_HAND.get(module, MODULES[module]),
                                        *[f"--deselect={d}" for d in DESELECT]]))
            except BaseException:  # the mutant breaks the module itself: caught
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            killed.append(name)
        print(f"{name}: {'killed' if name in killed else 'survived'}", flush=True)
    return {"killed": killed, "survivors": [n for n in names if n not in killed]}


def check_mutants(module: str, scratch: Path, only: list[str] | None = None, probe_only: bool = False,
                  ) -> dict[str, Any]:
    """Test each hand-written mutant of ``module``'s security checks (``bench.check_mutants.CHECKS``): the
    mutated file is written into ``scratch`` (a copy of the repository), so every module that imported a name from
    it sees the mutant too (``--by-hand`` patches one live module: names imported elsewhere stay genuine), and
    the module's tests run in a fresh process (``pytest -x``, ``nice -n 10``). Returns {"killed", "survivors",
    "timeouts"}: lists of mutant labels; ``only``: test just these labels (an earlier run's survivors);
    ``probe_only``: a mutant the probe does not kill is a survivor without the module's other tests (a lower
    bound on kills, for a loaded machine). Raises RuntimeError when the probed tests fail without a mutant."""
    sys.path.insert(0, str(REPO))  # run as a script: bench/ is on the path, the repository is not
    from bench.check_mutants import CHECK_TESTS, CHECKS

    target, original = scratch / module, (scratch / module).read_text()
    tests = [*CHECK_TESTS.get(module, MODULES[module]), *[f"--deselect={d}" for d in DESELECT]]
    command = ["nice", "-n", "10", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(scratch)}

    def outcome(probe: str | None = None) -> str:
        selection = [*command, "-k", probe] if probe else command
        try:
            code = subprocess.run(selection, cwd=scratch, env=env, check=False, capture_output=True,
                                  timeout=900).returncode
        except subprocess.TimeoutExpired:
            return "timeout"
        return "survived" if code in (0, 5) else "killed"  # 5: the probe selected no test

    mutants = [m for m in CHECKS[module] if only is None or m[0] in only]
    probes = " or ".join(f"({m[3]})" for m in mutants)  # what kills a mutant must pass without one
    if mutants and outcome(probes) != "survived":
        raise RuntimeError(f"{module}: the probed tests fail without any mutant; fix them first")
    found: dict[str, list[str]] = {"killed": [], "survivors": [], "timeouts": []}
    for label, old, new, probe in mutants:
        if original.count(old) != 1:
            raise ValueError(f"{module} mutant {label!r}: expected its text once in the module, found "
                             f"{original.count(old)} times; update bench/check_mutants.py")
        target.write_text(original.replace(old, new))
        result = outcome(probe)
        if result != "killed" and not probe_only:
            result = outcome()  # the probe passed: every test of the module
        found[{"killed": "killed", "survived": "survivors", "timeout": "timeouts"}[result]].append(label)
        print(f"  {label}: {result}", flush=True)
    target.write_text(original)
    return found


def progress(module: str, workdir: Path) -> dict[str, Any]:
    """Counts so far of a module's run, finished or not, read from mutmut's result file (no test is run)."""
    from mutmut.stats import status_by_exit_code

    meta = workdir / module.replace("/", "_").removesuffix(".py") / "mutants" / f"{module}.meta"
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts: dict[str, Any] = {}
    for name, code in codes.items():
        status = status_by_exit_code[code]
        counts[status] = counts.get(status, 0) + 1
        if status == "survived":
            counts.setdefault("survivors", []).append(name)
    return {"total": len(codes), **counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of them)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cscore-mutation"),
                        help="scratch folder (one sub-folder per module; default %(default)s)")
    parser.add_argument("--max-children", type=int, default=1, help="parallel test processes (default 1)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming an earlier run")
    parser.add_argument("--recheck", action="store_true",
                        help="re-test only the survivors and uncovered mutants of the last run (in summary.json), "
                        "with the current tests")
    parser.add_argument("--by-hand", action="store_true",
                        help="re-test the last run's survivors by applying each to the module's source (also "
                        "reaches code run at import, which mutmut cannot switch on); records what it kills")
    parser.add_argument("--checks", action="store_true",
                        help="test the hand-written mutants of each named module's security checks "
                        "(bench/check_mutants.py); writes <workdir>/checks.json")
    parser.add_argument("--survivors", action="store_true",
                        help="with --checks: re-test only the last --checks run's survivors")
    parser.add_argument("--probe-only", action="store_true",
                        help="with --checks: a mutant its probe does not kill counts as survived (faster; a lower "
                        "bound on kills)")
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="test only the mutants matching this mutmut name or fnmatch pattern (repeatable), "
                        "e.g. 'audit.verify.x__check_receipt__mutmut_*'")
    parser.add_argument("--tests", action="append", metavar="TEST",
                        help="run these tests (repeatable) instead of the module's list, e.g. the few that reach the "
                        "mutants --only selects when the whole list is slow")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, then exit")
    parser.add_argument("--status", action="store_true",
                        help="print each module's counts so far (a run may still be going), then exit")
    args = parser.parse_args(argv)
    if args.list:
        for module, tests in MODULES.items():
            print(f"{module}: {' '.join(tests)}")
        return 0
    if args.status:
        for module in args.modules or list(MODULES):
            counts = progress(module, args.workdir)
            if counts:
                print(f"{module}: {json.dumps(counts)}")
        return 0
    if args.checks:
        return _run_checks(args.modules, args.workdir, args.survivors, args.probe_only)
    if args.by_hand:
        summary_path = args.workdir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        for module in args.modules:  # a finished run's survivors, else those of a run stopped midway
            last = summary.get(module) or {"killed": 0, **progress(module, args.workdir)}
            summary[module] = last
            found = by_hand(module, args.workdir, last.get("survivors", []))
            last["by_hand_killed"] = found["killed"]
            last["survivors"] = found["survivors"]
            last["killed_with_by_hand"] = last["killed"] + len(found["killed"])
            summary_path.write_text(json.dumps(summary, indent=1))
            print(f"{module}: {last['killed_with_by_hand']}/{last['total']} killed with the by-hand re-test "
                  f"({len(found['killed'])} more), {len(found['survivors'])} survive", flush=True)
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown modules {unknown}; choose from {list(MODULES)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    summary_path = args.workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for module in args.modules or list(MODULES):
        # survivors, and mutants no selected test reached (new tests may reach them now)
        last = summary.get(module, {})
        survivors = [*last.get("survivors", []), *last.get("uncovered", [])] if args.recheck else None
        if args.recheck and not survivors:
            continue
        result = run_module(module, args.workdir / module.replace("/", "_").removesuffix(".py"), args.max_children,
                            args.fresh, survivors, args.only, args.tests)
        summary[module] = result
        summary_path.write_text(json.dumps(summary, indent=1))
        rate = f"{result['kill_rate']:.0%}" if result["kill_rate"] is not None else "n/a"
        print(f"{module}: {result['killed']}/{result['total']} killed ({rate}), {result['survived']} survived, "
              f"{result['timeout']} timeouts, {result['no_tests']} not covered, {result['seconds']} s", flush=True)
        for name in result["survivors"]:
            print(f"  survived: {name}")
    return 0


def _run_checks(modules: list[str], workdir: Path, survivors: bool, probe_only: bool) -> int:
    """--checks: each module's hand-written mutants, with its counts printed and kept in checks.json;
    ``survivors``: re-test only the last run's survivors and timeouts (tests were added; kills stay kills)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "checks.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    scratch = workdir / "checks"
    scratch_copy(scratch, fresh=True)  # once: the tests as they are when the run starts, for every module
    print(f"copied the repository into {scratch}", flush=True)
    for module in modules:
        print(module, flush=True)
        last = summary.get(module, {})
        only = [*last.get("survivors", []), *last.get("timeouts", [])] if survivors and last else None
        found = check_mutants(module, scratch, only, probe_only)
        if only is not None:  # the earlier run's kills stand
            found["killed"] = [*last["killed"], *found["killed"]]
        total = sum(len(v) for v in found.values())
        summary[module] = {**found, "total": total, "probe_only": probe_only}
        path.write_text(json.dumps(summary, indent=1))
        print(f"{module}: {len(found['killed'])}/{total} killed, survivors {found['survivors']}, "
              f"timeouts {found['timeouts']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
