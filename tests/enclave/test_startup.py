"""enclave.startup's refusals word for word: each start-up differs from an honest one only in what is refused."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from enclave.startup import (
    NATIVE_STARTUP_VARIABLES,
    PYTHON_STARTUP_VARIABLES,
    UnsafeStartup,
    refuse_unsafe_startup,
    startup_problems,
)

SAFE = SimpleNamespace(ignore_environment=0, safe_path=True, optimize=0, inspect=0)
PREFIX = "the worker refuses to start: "
SUFFIX = (". Unset these and start the worker as `python -P -m celery -A tasks.celery_app worker` (the measurement "
          "covers the code on disk, not how the interpreter was started).")
NO_SAFE_PATH = ("the interpreter runs without safe path (PYTHONSAFEPATH off): start it with `python -P` (or -I) so "
                "the working directory cannot shadow a module")


def _flags(**changed: object) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(SAFE), **changed})


def test_the_refused_variables_are_exactly_these() -> None:
    assert PYTHON_STARTUP_VARIABLES == (
        "PYTHONPATH", "PYTHONHOME", "PYTHONPLATLIBDIR", "PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONUSERBASE",
        "PYTHONEXECUTABLE", "PYTHONPYCACHEPREFIX", "PYTHONWARNINGS", "PYTHONBREAKPOINT", "PYTHONOPTIMIZE",
        "PYTHONDEBUG", "PYTHONCASEOK")
    assert NATIVE_STARTUP_VARIABLES == ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "OPENSSL_CONF", "OPENSSL_MODULES")


@pytest.mark.parametrize("name", PYTHON_STARTUP_VARIABLES)
def test_a_python_variable_is_refused_word_for_word(name: str) -> None:
    with pytest.raises(UnsafeStartup) as refused:
        refuse_unsafe_startup({"PATH": "/usr/bin", name: "/somewhere/secret-value"}, SAFE)
    assert str(refused.value) == f"{PREFIX}{name} is set (it changes what the interpreter loads at start-up){SUFFIX}"


@pytest.mark.parametrize("name", NATIVE_STARTUP_VARIABLES)
def test_a_loader_variable_is_refused_word_for_word_even_with_ignore_environment(name: str) -> None:
    for flags in (SAFE, _flags(ignore_environment=1)):
        with pytest.raises(UnsafeStartup) as refused:
            refuse_unsafe_startup({name: "/x.so"}, flags)
        assert str(refused.value) == f"{PREFIX}{name} is set (it loads native code into the worker){SUFFIX}"


def test_a_variable_set_empty_is_not_set() -> None:
    """An empty PYTHONPATH or LD_PRELOAD changes nothing, as for the interpreter and the loader."""
    assert startup_problems({"PYTHONPATH": "", "LD_PRELOAD": ""}, SAFE) == []
    refuse_unsafe_startup({"PYTHONPATH": "", "LD_PRELOAD": ""}, SAFE)  # does not raise


@pytest.mark.parametrize(("flag", "value", "problem"), [
    ("safe_path", False, NO_SAFE_PATH),
    ("optimize", 1, "the interpreter runs with -O (assert statements stripped)"),
    ("optimize", 2, "the interpreter runs with -O (assert statements stripped)"),
    ("inspect", 1, "the interpreter runs with -i (a prompt after the program)"),
])
def test_an_unsafe_flag_is_refused_word_for_word(flag: str, value: object, problem: str) -> None:
    assert startup_problems({}, _flags(**{flag: value})) == [problem]
    with pytest.raises(UnsafeStartup) as refused:
        refuse_unsafe_startup({}, _flags(**{flag: value}))
    assert str(refused.value) == f"{PREFIX}{problem}{SUFFIX}"


def test_every_problem_is_named_in_order_in_one_refusal() -> None:
    flags = SimpleNamespace(ignore_environment=0, safe_path=False, optimize=2, inspect=1)
    problems = ["PYTHONPATH is set (it changes what the interpreter loads at start-up)",
                "PYTHONWARNINGS is set (it changes what the interpreter loads at start-up)",
                "LD_PRELOAD is set (it loads native code into the worker)",
                "OPENSSL_CONF is set (it loads native code into the worker)",
                NO_SAFE_PATH, "the interpreter runs with -O (assert statements stripped)",
                "the interpreter runs with -i (a prompt after the program)"]
    environ = {"OPENSSL_CONF": "/c", "PYTHONWARNINGS": "w", "LD_PRELOAD": "/p.so", "PYTHONPATH": "/x"}
    assert startup_problems(environ, flags) == problems
    with pytest.raises(UnsafeStartup) as refused:
        refuse_unsafe_startup(environ, flags)
    assert str(refused.value) == PREFIX + "; ".join(problems) + SUFFIX


def test_without_flags_the_running_interpreters_are_read() -> None:
    environ = {"LD_PRELOAD": "/p.so", "PYTHONPATH": "/x"}
    expected = startup_problems(environ, sys.flags)
    assert expected[0] == "PYTHONPATH is set (it changes what the interpreter loads at start-up)"
    assert startup_problems(environ) == expected
    with pytest.raises(UnsafeStartup) as refused:
        refuse_unsafe_startup(environ)
    assert str(refused.value) == PREFIX + "; ".join(expected) + SUFFIX


def test_the_refusal_may_be_shared_it_names_variables_never_their_values() -> None:
    with pytest.raises(UnsafeStartup) as refused:
        refuse_unsafe_startup({"LD_PRELOAD": "/secret-value.so"}, SAFE)
    assert refused.value.shareable is True and "secret-value" not in str(refused.value)


# -- moved from test_measurement.py: the start-up refusals, less exactly worded --------------------------------

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
