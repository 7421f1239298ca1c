"""Temporary files that survive a kill: owner-tagged names, and removal of stale ones at start.

A writer that builds a file or folder under a temporary name and renames it into place leaves the
temporary behind when it is killed (SIGKILL, out of memory). Names made here carry an owner tag,
`<host>-<pid>` (host = 8 hex digits of a hash of the host name), so a later run can tell a
leftover from a write in progress:
- same host and the pid is gone: stale at once;
- another host (a cache on a shared file system) or a live pid: stale after `max_age_s` without
  a change (mtime), since a writer in progress keeps writing;
- a bare pid (names written before host tags): taken as this host's;
- no tag at all: stale after `untagged_age_s`.

Example: `.default-267014764e29.samidx.tmp-1a2b3c4d-4242-x8k2` left by a killed pid 4242 on this
host is removed by the next `save_index` of that index or the next default-index lookup.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import zlib
from pathlib import Path

MAX_AGE_S: float = 24 * 3600.0  # a tagged leftover of another host or a reused pid
UNTAGGED_AGE_S: float = 3600.0  # an untagged leftover (no pid to ask)
_TAG = re.compile(r"(?:(?P<host>[0-9a-f]{8})-)?(?P<pid>\d+)")


def host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def owner_tag() -> str:
    """`<host>-<pid>` of this process, for temporary names."""
    return f"{host_tag()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def is_stale(
    path: Path,
    tag: str | None,
    *,
    max_age_s: float = MAX_AGE_S,
    untagged_age_s: float = UNTAGGED_AGE_S,
) -> bool:
    """Whether the temporary `path` (owner `tag`, None if untagged) is a dead writer's leftover."""
    try:
        age = time.time() - path.lstat().st_mtime
    except OSError:
        return False  # gone already
    m = _TAG.fullmatch(tag) if tag else None
    if m is None:
        return age > untagged_age_s
    pid = int(m["pid"])
    here = (m["host"] or host_tag()) == host_tag()
    if here and pid == os.getpid():
        return False  # our own, in progress
    if here and not pid_alive(pid):
        return True
    return age > max_age_s


def remove_stale(folder: Path, pattern: re.Pattern[str], **ages: float) -> list[Path]:
    """Remove the entries of `folder` whose names fully match `pattern` (its optional `tag` group
    is the owner tag) and are stale; returns what was removed. Best effort: errors are ignored
    (another process may remove the same leftover)."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        path = folder / name
        if not is_stale(path, m.groupdict().get("tag"), **ages):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def fsync_dir(folder: Path) -> None:
    """Make a rename or creation in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
