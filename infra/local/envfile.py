"""A local stack's `stack.env`: KEY=VALUE lines, shell-quoted values.

Standard library only: party commands read it at start-up, and the stack's own module imports boto3,
moto's and Airflow's helpers (seconds).
"""

from __future__ import annotations

import shlex
from pathlib import Path


def load_env(path: Path) -> dict[str, str]:
    """Read a stack.env written by LocalStack (KEY=VALUE, shell-quoted values); raises OSError if unreadable."""
    env = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = "".join(shlex.split(value)) if value else ""
    return env
