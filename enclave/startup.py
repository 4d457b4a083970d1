"""The worker refuses to run in an interpreter whose start-up the platform could have changed.

The measurement (``enclave.measurement``) covers the code on disk; these variables and flags change
which code the interpreter loads or runs *before or around* it (a search path, a start-up script, a
native library preloaded into the process, asserts stripped), so they are refused rather than
measured: a worker started with any of them set exits before it serves a task. ``-E``/``-I``
(``sys.flags.ignore_environment``) make the ``PYTHON*`` variables inert, so they are then allowed;
the dynamic loader's variables are refused in every case. ``-P`` (or ``PYTHONSAFEPATH=1``) is
required, so the working directory never shadows an installed module.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

# PYTHON* variables that change what code is loaded or run (python(1) "Environment variables").
PYTHON_STARTUP_VARIABLES = (
    "PYTHONPATH",  # prepends search path entries
    "PYTHONHOME",  # replaces the standard library
    "PYTHONPLATLIBDIR",  # another stdlib/site folder
    "PYTHONSTARTUP",  # runs a file (interactive mode)
    "PYTHONINSPECT",  # drops into a prompt after the program
    "PYTHONUSERBASE",  # another user site folder, with its .pth files
    "PYTHONEXECUTABLE",  # another sys.executable (macOS framework builds)
    "PYTHONPYCACHEPREFIX",  # bytecode read from a folder the platform chooses
    "PYTHONWARNINGS",  # warning filters import the named category's module
    "PYTHONBREAKPOINT",  # breakpoint() imports and calls the named callable
    "PYTHONOPTIMIZE",  # strips assert statements
    "PYTHONDEBUG",  # parser debug output
    "PYTHONCASEOK",  # case-insensitive imports
)
# The dynamic loader's and OpenSSL's: native code loaded into the process, -E or not.
NATIVE_STARTUP_VARIABLES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "OPENSSL_CONF", "OPENSSL_MODULES")


class UnsafeStartup(RuntimeError):
    """The interpreter was started in a way the measurement does not cover; the message names how."""

    shareable = True  # names variables and flags only, never their values


def startup_problems(environ: Mapping[str, str], flags: Any = sys.flags) -> list[str]:
    """One sentence per refused variable or flag (empty: the start-up is one the measurement covers).

    ``flags`` has the attributes of ``sys.flags`` (ignore_environment, safe_path, optimize, inspect)."""
    problems = []
    if not flags.ignore_environment:
        problems += [f"{name} is set (it changes what the interpreter loads at start-up)"
                     for name in PYTHON_STARTUP_VARIABLES if environ.get(name)]
    problems += [f"{name} is set (it loads native code into the worker)"
                 for name in NATIVE_STARTUP_VARIABLES if environ.get(name)]
    if not flags.safe_path:
        problems.append("the interpreter runs without safe path (PYTHONSAFEPATH off): start it with "
                        "`python -P` (or -I) so the working directory cannot shadow a module")
    if flags.optimize:
        problems.append("the interpreter runs with -O (assert statements stripped)")
    if flags.inspect:
        problems.append("the interpreter runs with -i (a prompt after the program)")
    return problems


def refuse_unsafe_startup(environ: Mapping[str, str], flags: Any = sys.flags) -> None:
    """Raise UnsafeStartup naming every problem found by :func:`startup_problems`."""
    problems = startup_problems(environ, flags)
    if problems:
        raise UnsafeStartup("the worker refuses to start: " + "; ".join(problems)
                            + ". Unset these and start the worker as `python -P -m celery -A tasks.celery_app "
                            "worker` (the measurement covers the code on disk, not how the interpreter was "
                            "started).")
