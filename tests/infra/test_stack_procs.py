"""Process bookkeeping: a part's whole tree dies on stop, even processes that left its session."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from infra.local import procs

pytestmark = pytest.mark.timeout(60)

# The leader starts a child in a new session; that child forks a grandchild and exits (an orphan).
ESCAPE = """
import os, subprocess, sys, time
code = "import os, time\\nif os.fork() == 0:\\n    time.sleep(60)\\n"
subprocess.Popen([sys.executable, "-c", code], start_new_session=True).wait()
print("forked", flush=True)
time.sleep(60)
"""


def _descendants_ready(part: procs.Part) -> set[int]:
    deadline = time.monotonic() + 10
    while "forked" not in part.log_file.read_text():
        assert time.monotonic() < deadline, part.log_file.read_text()
        time.sleep(0.05)
    return procs.tree(part.pid)


def test_orphans_in_their_own_session_stay_in_the_tree_and_die(tmp_path: Path) -> None:
    part = procs.spawn("escape", [sys.executable, "-c", ESCAPE], dict(os.environ), tmp_path, tmp_path)
    pids = _descendants_ready(part)
    assert len(pids) == 2  # the leader and the re-parented grandchild (the subreaper keeps it)
    orphan = (pids - {part.pid}).pop()
    assert os.getsid(orphan) != part.pid
    procs.kill_tree(part.pid, timeout=5)
    part.popen.wait(timeout=5)
    assert not any(procs.alive(p) for p in pids)


def test_a_recycled_pid_is_not_taken_for_ours(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids" / "x.pid"
    pid_file.parent.mkdir()
    pid_file.write_text("1\n")
    assert not procs.is_our_leader(1, pid_file)  # init: started long before, not our session
    part = procs.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ),
                       tmp_path, tmp_path)
    try:
        assert procs.is_our_leader(part.pid, part.pid_file)
        os.utime(part.pid_file, (0, 0))  # a pid file older than the process: the pid was reused
        assert not procs.is_our_leader(part.pid, part.pid_file)
    finally:
        procs.kill_tree(part.pid, timeout=5)
        part.popen.wait(timeout=5)


# Like Airflow's LocalExecutor workers after a killed scheduler: children that rename themselves
# (setproctitle), ignore SIGTERM, one in the leader's session and one in a session of its own.
STUBBORN = """
import os, signal, subprocess, sys, time
child = (
    "import os, signal, sys, time, setproctitle\\n"
    "if sys.argv[1] == 'own-session':\\n    os.setsid()\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "setproctitle.setproctitle('airflow worker -- LocalExecutor: <idle> ' + 'x' * 300)\\n"
    "print('ready', flush=True)\\n"
    "time.sleep(120)\\n"
)
kids = [subprocess.Popen([sys.executable, "-c", child, how], stdout=subprocess.PIPE)
        for how in ("same-session", "own-session")]
for kid in kids:
    kid.stdout.readline()
print("forked", " ".join(str(k.pid) for k in kids), flush=True)
time.sleep(120)
"""


def test_stop_after_the_leader_died_first_kills_what_it_left(tmp_path: Path) -> None:
    part = procs.spawn("scheduler", [sys.executable, "-c", STUBBORN], dict(os.environ), tmp_path, tmp_path)
    pids = _descendants_ready(part)
    kids = {int(p) for p in part.log_file.read_text().split("forked", 1)[1].split()}
    assert kids < pids
    os.kill(part.pid, signal.SIGKILL)  # the scheduler alone is killed ...
    part.popen.wait(timeout=5)
    time.sleep(0.2)
    assert all(procs.alive(k) for k in kids)  # ... its workers live on under init
    assert procs.running(tmp_path)  # a start here would be refused
    assert procs.clean_stale(tmp_path) == ["scheduler"]  # what `cscore stack stop` runs
    assert not any(procs.alive(k) for k in kids)
    assert not procs.running(tmp_path)
