"""Progress bars on long work (submit, waiting for a batch, fetching results), for a person at a terminal only.

Drawn with rich on standard error, and only when standard error is a terminal: under tests, in logs and in
pipes nothing is drawn (and rich is not even imported), so output stays what the command prints.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    """One task's progress: `advance(n)` units done, `describe(text)` what it is doing now. Does nothing off a
    terminal."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar, self._task = bar, task

    def advance(self, units: int = 1, total: int | None = None) -> None:
        """`units` more done (of `total`, when it is known only now)."""
        if self._bar is not None:
            self._bar.update(self._task, advance=units, **({"total": total} if total is not None else {}))

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)


def on_terminal() -> bool:
    """Whether standard error is a terminal (where progress is drawn)."""
    return sys.stderr.isatty()


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "") -> Iterator[Progress]:
    """A progress bar for `total` units (a spinner and a count when `total` is None), removed when done."""
    if not on_terminal():
        yield Progress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn() if total else TextColumn(""),
               MofNCompleteColumn() if total else TextColumn("{task.completed}"), TextColumn(unit),
               TimeElapsedColumn()]
    with Bar(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        yield Progress(bar, bar.add_task(description, total=total))
