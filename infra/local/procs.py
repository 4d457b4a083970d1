"""Process bookkeeping for the local stack: spawn, pid files, find and kill whole process trees.

Each part leads its own session and is made a child subreaper (PR_SET_CHILD_SUBREAPER survives exec), so
processes that leave its session or process group (Airflow task processes call ``setpgid``, BashOperator
children ``setsid``) and are orphaned stay its descendants. Every process also carries
``CSCORE_STACK_OWNER=<state dir>`` in its environment, a last sweep for whatever escaped anyway (processes
that rewrite their title with setproctitle would lose it: ``SPT_NOENV=1`` keeps setproctitle off the
environment). When a leader itself died first, what is left of its session and process group (Airflow's
LocalExecutor workers, which ignore SIGTERM, after a killed scheduler) is found by session id: the kernel
never hands out a pid that is still some live process's session or group id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

MARKER = "CSCORE_STACK_OWNER"
_SUBREAPER_EXEC = (  # become a child subreaper, then exec the part's command line
    "import ctypes, os, sys; ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


@dataclass
class Part:
    """One started OS process (the leader of its own session) and where its traces live."""

    name: str
    popen: subprocess.Popen[bytes]
    pid: int
    pid_file: Path
    log_file: Path


def spawn(name: str, argv: list[str], env: Mapping[str, str], state_dir: Path, cwd: Path) -> Part:
    """Start argv in a new session, output to logs/<name>.log, pid to pids/<name>.pid."""
    log_file = state_dir / "logs" / f"{name}.log"
    pid_file = state_dir / "pids" / f"{name}.pid"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**env, MARKER: str(state_dir), "SPT_NOENV": "1"}  # setproctitle keeps environ (the marker)
    with open(log_file, "ab") as log:
        popen = subprocess.Popen(  # noqa: S603 - argv is built by the stack, never from user input
            [sys.executable, "-c", _SUBREAPER_EXEC, *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(f"{popen.pid}\n")
    return Part(name, popen, popen.pid, pid_file, log_file)


def _read_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    stat = _read_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _has_marker(pid: int, state_dir: Path) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER}={state_dir}".encode() in environ.split(b"\0")


def marked_pids(state_dir: Path) -> set[int]:
    """Every live process started (directly or not) by the stack rooted at state_dir."""
    me = os.getpid()
    return {p for p in _all_pids() if p != me and _has_marker(p, state_dir) and alive(p)}


def tree(leader: int) -> set[int]:
    """The leader, its session, its process group and all its descendants."""
    stats = {p: s for p in _all_pids() if (s := _read_stat(p)) is not None}
    found = {p for p, s in stats.items() if leader in (s[2], s[3])}
    found.add(leader)
    children: dict[int, list[int]] = {}
    for p, s in stats.items():
        children.setdefault(s[1], []).append(p)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if alive(p)}


def signal_all(pids: Iterable[int], sig: int) -> None:
    """Send sig to each pid, ignoring ones that already left."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of pids is alive; return the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if alive(p)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_tree(leader: int, timeout: float = 10.0) -> list[str]:
    """SIGTERM the leader's whole tree, SIGKILL what is left after timeout (see kill_trees)."""
    return kill_trees([leader], timeout)


def kill_trees(leaders: list[int], timeout: float = 10.0) -> list[str]:
    """SIGTERM every leader's whole tree at once, SIGKILL what is left after timeout; name those.

    Each leader must be known to be ours (our unreaped child, or checked with is_our_leader), so neither
    it nor its session id can have been recycled.
    """
    def trees() -> set[int]:
        return set().union(*(tree(leader) for leader in leaders))

    pids = trees()
    signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids | trees() if alive(p)}) and time.monotonic() < deadline:
        signal_all(left - pids, signal.SIGTERM)  # forked while stopping: still ours
        pids |= left
        time.sleep(0.05)
    names = [f"{describe(p)} ({p})" for p in sorted(left)]
    signal_all(left, signal.SIGKILL)
    wait_gone(left, 5.0)
    return names


def describe(pid: int) -> str:
    """A process's command line, shortened, for messages."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80].strip()
    except OSError:
        return "?"


def sweep(state_dir: Path, timeout: float = 5.0) -> set[int]:
    """Kill every process still carrying this stack's marker; return what was found."""
    pids = marked_pids(state_dir)
    signal_all(pids, signal.SIGTERM)
    survivors = wait_gone(pids, timeout)
    signal_all(survivors, signal.SIGKILL)
    wait_gone(survivors, 5.0)
    return pids


def clean_stale(state_dir: Path) -> list[str]:
    """Stop everything the stack rooted at state_dir started, whatever died first; return the part names.

    A live leader's whole tree is killed; a dead leader's leftovers are found by its session and group id;
    a last sweep kills whatever still carries the stack's marker. The pid files are removed.
    """
    pid_dir = state_dir / "pids"
    cleaned = []
    for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
        pid = _pid_of(pid_file)
        if pid is not None and is_our_leader(pid, pid_file):  # a recycled pid is someone else's process
            kill_tree(pid, timeout=5.0)
        elif pid is not None and not alive(pid):
            kill_orphans_of(pid)
        pid_file.unlink(missing_ok=True)
        cleaned.append(pid_file.stem)
    sweep(state_dir)
    return cleaned


def orphans_of(leader: int) -> set[int]:
    """Live processes still in a dead leader's session or process group, and their descendants."""
    if alive(leader):
        return set()  # a live pid is a live leader (handled by kill_tree) or someone else's: not orphans
    members = {p for p in _all_pids() if (s := _read_stat(p)) is not None and leader in (s[2], s[3])}
    return set().union(*(tree(p) for p in members)) if members else set()


def kill_orphans_of(leader: int, timeout: float = 5.0) -> set[int]:
    """SIGTERM a dead leader's leftovers, SIGKILL those that ignore it after timeout; return what was found."""
    pids = orphans_of(leader)
    signal_all(pids, signal.SIGTERM)
    survivors = wait_gone(pids, timeout)
    signal_all(survivors, signal.SIGKILL)
    wait_gone(survivors, 5.0)
    return pids


def running(state_dir: Path) -> dict[str, int]:
    """What of the stack rooted at state_dir still runs: part name -> leader pid, "leftover-<pid>" -> pid
    for marked processes whose part is gone. Empty when nothing does."""
    pid_dir = state_dir / "pids"
    found: dict[str, int] = {}
    for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
        pid = _pid_of(pid_file)
        if pid is not None and is_our_leader(pid, pid_file):
            found[pid_file.stem] = pid
        elif pid is not None and (left := orphans_of(pid)):
            found.update({f"leftover-{p}": p for p in sorted(left)})
    known = set().union(*(tree(p) for p in found.values())) if found else set()
    found.update({f"leftover-{p}": p for p in sorted(marked_pids(state_dir) - known)})
    return found


def is_our_leader(pid: int, pid_file: Path) -> bool:
    """True when pid still is the session leader that pid_file was written for.

    The file is written right after the start; a recycled pid belongs to a process started after the
    original died, so after the file was written.
    """
    stat = _read_stat(pid)
    if stat is None or stat[0] in ("Z", "X") or stat[3] != pid:
        return False
    return _start_time(pid) <= pid_file.stat().st_mtime + 2.0


def _start_time(pid: int) -> float:
    """Wall-clock start time of a process (boot time + its start in clock ticks)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    ticks = int(raw[raw.rindex(")") + 2:].split()[19])
    btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def _pid_of(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
