"""Files written safely: atomic, durable replacement (`atomic_write`), and temporaries that
survive a kill: owner-tagged names, and removal of stale ones at start. Standard library only, so
every layer can use it.

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
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Replace `path` by what `write(f)` writes, all or nothing: a fresh owner-tagged
    `.<name>.tmp-<host>-<pid>-<random>` beside it (mkstemp: O_EXCL, so a planted symlink is never
    followed and no two writers share one), fsynced, made 0644, renamed over `path`, and the
    rename made durable. The temporary is removed on any error; one left by a kill is removed by
    the writer's next `remove_stale` (its pattern's `tag` group matches `<host>-<pid>`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{owner_tag()}-", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp made it 0600; nothing written here is secret
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_sections(f: BinaryIO, head: bytes, sections: list[tuple[int, bytes]], size: int) -> None:
    """Write `head`, then each (offset, data) at its offset (zero padding between), then zeros up
    to `size`: the layout of samgpu's binary files (an index, a store)."""
    f.write(head)
    for offset, data in sections:
        f.write(b"\0" * (offset - f.tell()))
        f.write(data)
    f.write(b"\0" * (size - f.tell()))
