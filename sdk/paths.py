"""What an input path the owner gave is, in words for an error: the readers take regular files and folders only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"))


def path_kind(path: Path) -> str:
    """What `path` is ("no such file or folder", "a folder", "a character device", ...), links followed."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"a broken symbolic link (to {os.readlink(path)!r}, which does not exist)"
        return "no such file or folder"
    except NotADirectoryError:
        return "no such file or folder (a part of the path is a file, not a folder)"
    return next((kind for test, kind in _KINDS if test(mode)), f"an unknown kind of file (mode {mode:o})")


def not_readable(path: Path, expected: str) -> str:
    """The error for a `path` that is neither a regular file nor a folder: what it is, what was expected, what to do."""
    kind = path_kind(path)
    todo = ("check the path" if kind.startswith(("no such", "a broken")) else
            "save the input as a regular file (or a folder of them) and give that path")
    return f"{path}: expected {expected}, found {kind}; {todo}"
