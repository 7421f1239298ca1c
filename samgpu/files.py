"""Files written safely: atomic, durable replacement (`atomic_write`), and temporaries that
survive a kill: owner-tagged names, and removal of stale ones at start. Also the layout shared by
samgpu's binary files (an index, a store): `PREFIX` (magic, format version, header length, CRC-32
of the header), a JSON header, then arrays at ALIGN-byte offsets (`write_prefixed`,
`read_prefixed_header`, `crc32`). Standard library only, so every layer can use it.

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

import json
import os
import re
import shutil
import socket
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

MAX_AGE_S: float = 24 * 3600.0  # a tagged leftover of another host or a reused pid
UNTAGGED_AGE_S: float = 3600.0  # an untagged leftover (no pid to ask)
PREFIX = struct.Struct("<8sIII")  # magic, version, header length, header crc32
ALIGN: int = 64  # array offsets in a binary file are multiples of this
_CRC_BLOCK = 1 << 24
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


def same_file(a: Path, b: Path) -> bool:
    """a and b name one file (links followed); for paths that do not exist (yet), the same
    resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.expanduser().resolve() == b.expanduser().resolve()


def unwritable_reason(path: Path) -> str | None:
    """Why `path` could not be written (its folder, or the nearest existing ancestor that saving
    creates it in, is a file or not writable by this process), or None: checked before long work,
    so that no run ends in an OSError."""
    folder = path.expanduser().absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{str(folder)!r} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write in folder {str(folder)!r}"
    return None


def starts_with(path: Path, magic: bytes) -> bool:
    """The file begins with `magic` (a samgpu file kind's first bytes)."""
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


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


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def crc32(buf) -> int:
    """CRC-32 of a C-contiguous buffer (a numpy array), in 16 MB blocks."""
    view = memoryview(buf).cast("B")
    crc = 0
    for lo in range(0, len(view), _CRC_BLOCK):
        crc = zlib.crc32(view[lo : lo + _CRC_BLOCK], crc)
    return crc


def write_prefixed(path: Path, magic: bytes, version: int, meta: dict, arrays: dict) -> None:
    """Write a binary file atomically: PREFIX, the JSON header `meta`, then each array named in
    meta["arrays"] (entries with "name" and "count"; their "offset" and meta["file_size"] are
    filled in here) from `arrays` (name -> numpy array) at its offset."""
    entries = meta["arrays"]
    for _ in range(3):  # offsets depend on the header length, which depends on their digits
        header = json.dumps(meta, sort_keys=True).encode()
        pos = align(PREFIX.size + len(header) + 64)
        for e in entries:
            e["offset"] = pos
            pos = align(pos + arrays[e["name"]].itemsize * e["count"])
        meta["file_size"] = pos
    header = json.dumps(meta, sort_keys=True).encode()
    if entries and PREFIX.size + len(header) > entries[0]["offset"]:
        raise RuntimeError("header does not fit before the first array")  # internal invariant
    head = PREFIX.pack(magic, version, len(header), zlib.crc32(header)) + header
    sections = [(e["offset"], arrays[e["name"]].tobytes()) for e in entries]
    atomic_write(path, lambda f: write_sections(f, head, sections, meta["file_size"]))


def read_prefixed_header(
    path: Path,
    *,
    what: str,
    magic: bytes,
    versions: tuple[int, ...],
    max_header: int,
    hint: str,
    make_hint: str,
) -> tuple[int, bytes, int]:
    """(format version, header bytes, file size) of an existing binary file, with its prefix
    checked: the magic, a readable version, a header length within the file and `max_header`
    (never size a read from an unchecked length: 4 GB for a lying u32), the header's CRC. Any
    deviation is one ValueError naming `what` and the file, ending with `hint` (how to replace
    the file), or, for a file without the magic (some other file, not to be deleted or rebuilt),
    with `make_hint` (how to make one)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(PREFIX.size)
        if len(prefix) < PREFIX.size:
            raise ValueError(f"{what} {path} is truncated ({size} bytes); {hint}")
        found, version, header_len, header_crc = PREFIX.unpack(prefix)
        if found != magic:
            raise ValueError(
                f"{path} is not a samgpu {what} (magic {found!r}, expected {magic!r}); give the "
                f"path of a {what} ({make_hint})"
            )
        if version not in versions:
            readable = ", ".join(map(str, versions))
            raise ValueError(
                f"{what} {path} has format version {version}, this samgpu reads "
                f"version{'s' if len(versions) > 1 else ''} {readable}; {hint}"
            )
        if header_len > min(size - PREFIX.size, max_header):
            raise ValueError(
                f"{what} {path} is truncated inside its header (header length {header_len}, "
                f"file {size} bytes); {hint}"
            )
        header = f.read(header_len)
    if len(header) < header_len:
        raise ValueError(f"{what} {path} is truncated inside its header; {hint}")
    if zlib.crc32(header) != header_crc:
        raise ValueError(f"{what} {path} has a corrupt header (CRC mismatch); {hint}")
    return version, header, size
