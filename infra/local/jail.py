"""Run a command as an unprivileged user, in a private mount namespace where the paths it needs are reachable.

    python -I infra/local/jail.py --uid 990 --gid 990 --user cscore-platform --home DIR \
        --expose /root/.pyenv/versions/3.11.7 --expose /srv/state -- airflow scheduler

Started as root (by the local stack, after `ip netns exec`), it
1. unshares the mount namespace (private: nothing propagates back to the host);
2. makes every `--expose` path reachable by the user: each ancestor the user may not traverse (e.g. /root,
   0700) is covered with an empty tmpfs (0711) into which only the exposed child is bind-mounted back, so
   the user sees that child and nothing else of the folder;
3. drops to uid/gid with no supplementary groups (which clears every capability), sets no_new_privs (no
   setuid binary gives root back) and umask 077, HOME/USER/LOGNAME, and execs the command (same pid).

Standalone on purpose (standard library only, run by path with -I): the Celery workers start without
PYTHONPATH. Errors: exit 126 with the failing step on stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import stat
import sys
from collections.abc import Sequence

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def raw(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(_libc.mount(raw(source), raw(target), raw(fstype), ctypes.c_ulong(flags), raw(data)),
           f"mount {source} on {target}")


def traversable(path: str, uid: int, gid: int) -> bool:
    """Whether uid (primary group gid, no other group) may search the directory path (mode bits only)."""
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def expose(paths: Sequence[str], uid: int, gid: int) -> list[str]:
    """Cover each ancestor of `paths` that uid cannot traverse with a tmpfs holding only the exposed
    children (bind-mounted back); return the covered folders. Needs its own mount namespace and root."""
    wanted = [os.path.realpath(p) for p in paths]
    covered: list[str] = []
    for path in wanted:
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts)):  # each ancestor of path, "/" first; path itself stays as it is
            here = "/" + "/".join(parts[:depth])
            if not traversable(here, uid, gid):
                children = {w.split("/")[depth + 1] for w in wanted
                            if w.startswith(here.rstrip("/") + "/") and len(w.split("/")) > depth + 1}
                _cover(here, sorted(children))
                covered.append(here)
    return covered


def _cover(folder: str, children: Sequence[str]) -> None:
    """An empty tmpfs (root, 0711) over folder, each child of it bind-mounted back in (through an O_PATH fd
    taken before the tmpfs hides it)."""
    fds = {c: os.open(os.path.join(folder, c), os.O_PATH | os.O_CLOEXEC) for c in children}
    _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0711,size=64k")
    for child, fd in fds.items():
        target = os.path.join(folder, child)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        os.close(fd)


def drop(uid: int, gid: int) -> None:
    """setgroups([]), setresgid, setresuid (the kernel clears every capability), no_new_privs, umask 077."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise OSError(f"still root after setresuid({uid})")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.umask(0o077)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jail.py", description=__doc__.split("\n")[0])
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--user", required=True, help="the account's name (USER, LOGNAME)")
    parser.add_argument("--home", required=True, help="HOME for the command (a folder the user owns)")
    parser.add_argument("--expose", action="append", default=[], help="a path the command needs (repeatable)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.uid == 0:
        parser.error("a command and a non-root --uid are required")
    try:
        cwd = os.getcwd()
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here reaches the host
        expose([*args.expose, cwd], args.uid, args.gid)
        os.chdir(cwd)  # through the new mounts
        drop(args.uid, args.gid)
    except OSError as exc:
        print(f"jail: {exc}", file=sys.stderr)
        return 126
    os.environ.update(HOME=args.home, USER=args.user, LOGNAME=args.user)
    os.execvp(command[0], command)
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main())
