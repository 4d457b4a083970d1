"""A local stack whose variables live in os.environ only while it runs, for module-scoped fixtures."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.local.stack import LocalStack


@contextmanager
def running_stack(state: Path, **options: Any) -> Iterator[LocalStack]:
    """Start a LocalStack with every part embedded (no CSCORE_* variable of the caller's leaks in), put its
    variables in os.environ, and on exit stop it and restore os.environ exactly."""
    saved = dict(os.environ)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CSCORE_")}
    running = LocalStack(state, environ=clean, **options)
    running.start()
    os.environ.update(running.env)
    try:
        yield running
    finally:
        gc.collect()  # Celery results' __del__ talks to Redis: collect them while the stack still runs
        running.stop()
        os.environ.clear()
        os.environ.update(saved)
