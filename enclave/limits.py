"""The platform's per-batch limits on a model's run: wall time per row and the worker's resident memory.

A provider's model is arbitrary ONNX; one that is too slow or too large for the platform's machines must be
stopped with a reason, not hang a worker or take it down. onnxruntime checks `RunOptions.terminate` between
operators, so one watchdog thread per process watches the run in progress and sets it when the run outgrows
its budget (`ms_per_row` x rows run, `memory_mib` of this process's RSS). A single operator is not
interrupted: the VM's own memory bound stays the backstop for one allocation beyond the machine.

The limits come from the platform (`wire.shard.ShardSpec`): they protect only availability, which the
platform controls anyway, so they need no attestation.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import onnxruntime as ort

from wire.shard import DEFAULT_MEMORY_MIB, DEFAULT_MS_PER_ROW

T = TypeVar("T")
# How often the watchdog looks while runs come: a run overshoots its budget by about this much. 10 ms cost the
# scorer 9 % of its CPU (statm reads and GIL hand-offs between 64-row chunks of ~4 ms); 50 ms under 1 %.
_POLL_S = 0.05
_LINGER_S = 1.0  # polling that long with nothing armed, it sleeps until the next run: no wake-up per chunk
_PAGE = os.sysconf("SC_PAGE_SIZE")


class LimitExceeded(RuntimeError):
    """The model's run outgrew the batch's limits; the message names the limit, its value and what was seen."""


@dataclass(frozen=True)
class RunLimits:
    """`ms_per_row`: wall milliseconds per row the model runs; `memory_mib`: the process's RSS while it runs."""

    ms_per_row: int = DEFAULT_MS_PER_ROW
    memory_mib: int = DEFAULT_MEMORY_MIB


DEFAULT_LIMITS = RunLimits()


def resident_mib() -> float:
    """This process's resident set size in MiB (Linux /proc/self/statm)."""
    return int(Path("/proc/self/statm").read_bytes().split()[1]) * _PAGE / (1 << 20)


@dataclass
class _Run:
    options: ort.RunOptions
    deadline: float
    limits: RunLimits
    rows: int
    reason: str = ""


class _Watchdog:
    """One daemon thread that stops each armed run when it passes its deadline or memory limit."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._runs: dict[int, _Run] = {}
        self._asleep = False
        threading.Thread(target=self._watch, name="cscore-run-limits", daemon=True).start()

    def arm(self, run: _Run) -> None:
        with self._wake:
            if self._asleep:  # a polling watchdog sees the run at its next look
                self._wake.notify()
            self._runs[id(run)] = run

    def disarm(self, run: _Run) -> str:
        with self._wake:
            self._runs.pop(id(run), None)
            return run.reason

    def _watch(self) -> None:
        quiet = 0.0  # seconds polled with nothing armed
        while True:
            with self._wake:
                if not self._runs and quiet >= _LINGER_S:
                    self._asleep = True
                    while not self._runs:
                        self._wake.wait()
                    self._asleep = False
                quiet = 0.0 if self._runs else quiet + _POLL_S
                for key, run in list(self._runs.items()):
                    run.reason = _breach(run)
                    if run.reason:
                        run.options.terminate = True
                        del self._runs[key]
                self._wake.wait(_POLL_S)


def _breach(run: _Run) -> str:
    if time.monotonic() > run.deadline:
        return (f"the model ran {run.rows} rows for more than {run.rows * run.limits.ms_per_row} ms, over the "
                f"batch's limit of {run.limits.ms_per_row} ms per row set by the platform")
    rss = resident_mib()
    if rss > run.limits.memory_mib:
        # Not the figure seen: the model sizes its own tensors, and this text reaches the platform.
        return (f"the worker's memory went over the batch's limit of {run.limits.memory_mib} MiB set by the "
                "platform while the model ran")
    return ""


_watchdog: _Watchdog | None = None
_start_lock = threading.Lock()


def _forget_watchdog() -> None:
    global _watchdog
    _watchdog = None  # a forked child (Celery's prefork pool) has no copy of the parent's thread


os.register_at_fork(after_in_child=_forget_watchdog)


def watched(run: Callable[[ort.RunOptions], T], limits: RunLimits, rows: int) -> T:
    """`run(options)` with `options.terminate` set if it outgrows `limits` for `rows` rows.

    Raises LimitExceeded naming the limit when the watchdog stopped it; any other error of `run` passes through.
    """
    global _watchdog
    with _start_lock:
        if _watchdog is None:
            _watchdog = _Watchdog()
        watchdog = _watchdog
    armed = _Run(ort.RunOptions(), time.monotonic() + rows * limits.ms_per_row / 1000, limits, rows)
    watchdog.arm(armed)
    try:
        result = run(armed.options)
    except Exception:
        if watchdog.disarm(armed):
            raise LimitExceeded(armed.reason) from None
        raise
    if watchdog.disarm(armed):  # the flag came after the last operator: finished, but outside its budget
        raise LimitExceeded(armed.reason)
    return result
