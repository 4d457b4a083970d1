"""Each simulated machine's processes as an unprivileged Unix user of its own, its folders of the state dir
owned by that user and mode 0700: no machine reads another party's keys (the brokers' KEKs and key stores,
the owner's signing key, the simulated chip's key), whatever it runs.

    account("platform")                  # MachineUser("cscore-platform", ("platform", "airflow"))
    ensure_user("cscore-platform")       # (uid, gid), created once with useradd (system, no login, no home)
    hand_over(state_dir, account("platform"))   # chown -R, chmod 0700 its folders
    launcher(state_dir, account("platform"), repo)  # argv prefix: infra/local/jail.py as that user

The parties the host plays (owner, providers) get their homes handed to an account too, without processes.
Needs root (useradd, chown, mount). Errors: StackError naming the command and its stderr.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra.local.util import StackError

JAIL = Path(__file__).with_name("jail.py")
PREFIX = "cscore-"  # every account this module creates


@dataclass(frozen=True)
class MachineUser:
    """An account and the folders of the state dir it owns; the first one is its HOME."""

    name: str
    folders: tuple[str, ...]


# Part name or role -> its account; brokers of different parties share a machine but not an account.
ACCOUNTS = {
    "redis": MachineUser("cscore-redis", ("redis",)),
    "workers": MachineUser("cscore-worker", ("worker", "sim-tee")),
    "platform": MachineUser("cscore-platform", ("platform", "airflow")),
    "owner-broker": MachineUser("cscore-obroker", ("brokers/owner",)),
    "provider-broker": MachineUser("cscore-pbroker", ("brokers/provider",)),
    "vision-broker": MachineUser("cscore-vbroker", ("brokers/vision",)),
    # Played by the supervising host process (root): their homes only, no process runs as them.
    "owner": MachineUser("cscore-owner", ("owner",)),
    "provider": MachineUser("cscore-provider", ("provider",)),
    "vision": MachineUser("cscore-vision", ("vision",)),
}


def account(key: str) -> MachineUser | None:
    """The account of a part name (e.g. "owner-broker") or role ("platform"); None: none (runs as root)."""
    return ACCOUNTS.get(key)


def ensure_user(name: str) -> tuple[int, int]:
    """(uid, gid) of a system account, created with its own group if missing (a parallel run may win)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        done = subprocess.run(  # noqa: S603 - fixed argv, name from ACCOUNTS
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True, timeout=30, check=False)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise StackError(f"useradd {name} failed ({done.returncode}): {done.stderr.strip()}; "
                             "separate machine users need root and useradd") from None
    if entry.pw_uid == 0:
        raise StackError(f"account {name} has uid 0: refusing to run a machine as root")
    return entry.pw_uid, entry.pw_gid


def hand_over(state_dir: Path, user: MachineUser) -> tuple[int, int]:
    """Create the user's folders (0700), give them and everything in them to it; return (uid, gid).

    Walks with directory fds and never follows a link, so a link the user planted cannot redirect the chown;
    a file with more than one link (a hard link the user made to a file elsewhere) is left as it is."""
    uid, gid = ensure_user(user.name)
    for folder in user.folders:
        top = state_dir / folder
        top.mkdir(parents=True, exist_ok=True)
        for _, dirs, files, dir_fd in os.fwalk(top):
            for name in (*dirs, *files):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    continue
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        os.chown(top, uid, gid, follow_symlinks=False)
        os.chmod(top, 0o700)
    return uid, gid


def own_copies(env: dict[str, str], state_dir: Path, user: MachineUser) -> dict[str, str]:
    """env with every file of the supervisor's `<state>/tls/` it names (CA certificates, public) copied into
    the user's own folder and named there instead (in URLs and JSON alike), as a real machine is provisioned
    with its own copy: no machine reads a folder another party writes."""
    shared = state_dir / "tls"
    home = state_dir / user.folders[0] / "tls"
    found = {m for value in env.values() for m in re.findall(re.escape(str(shared)) + r"/[^\s&\"',;]+", value)}
    copies = {}
    for path in sorted(found):
        if Path(path).is_file():
            copy = home / Path(path).relative_to(shared)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            copies[path] = str(copy)
    if not copies:
        return env
    pattern = re.compile("|".join(re.escape(p) for p in sorted(copies, key=len, reverse=True)))
    return {k: pattern.sub(lambda m: copies[m.group(0)], v) for k, v in env.items()}


def launcher(state_dir: Path, user: MachineUser, repo: Path) -> list[str]:
    """The argv prefix that runs a command as `user` (infra/local/jail.py), with the interpreter, the
    virtual environment, the repository and the state dir reachable; its folders handed over first."""
    uid, gid = hand_over(state_dir, user)
    exposed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, repo, state_dir)})
    return [sys.executable, "-I", str(JAIL), "--uid", str(uid), "--gid", str(gid), "--user", user.name,
            "--home", str(state_dir / user.folders[0]), *(f"--expose={p}" for p in exposed), "--"]


def require_root() -> None:
    """StackError unless this process is root (useradd, chown and mount need it)."""
    if os.geteuid() != 0:
        raise StackError("separate machine users (users=True) need root: useradd, chown and mount; "
                         "run as root or start the stack with users=False")
