"""JSONL out, with resume: the output side of `samgpu generate --input/--output` (the input side,
samgpu.inputs, is re-exported here).

Output: the input object with the result fields added (`completion`, `finish_reason`,
`num_tokens`, `stats`), one line per input record, in input order. Records are identified by their
0-based position among the input's records (`index`), which is what resume keys on.

Crash safety and resume (DESIGN.md §9): finished records are appended, as they finish, to
`<output>.partial`, whose first line is a header fingerprinting the input file and the settings
that change the text (model, sampling, max_new_tokens, ...). The header is written, flushed and
fsynced before `OutputWriter.open` returns, so a run killed at any later point (loading the
model, warming up) resumes; a partial that is empty, holds only a torn header (a kill during
that write), or a header and no record (then whatever its settings) counts as "nothing done
yet", and a set-up that fails before any record (`close(discard_unstarted=True)`) removes it.
Each `append` hands its line to the OS at once and fsyncs it. Only when every record is done is
the final file written, to a fresh `.<output name>.<random>.tmp` (created exclusively), fsynced
and renamed onto `<output>`; the partial file is then removed. A final file therefore always
looks complete because it is. Re-running the same command finds the partial file, keeps its
finished records (a torn last line from a crash is dropped and cut from the file) and generates
only the rest. Settings that do not change the text (method, batch size, device) may differ
between runs, so a run that ran out of memory can be resumed with a smaller `--batch-size`.

The final file's fingerprint: beside `<output>` lies `<output>.samgpu.json`, written (and renamed
into place) just before it: the same settings as the partial header, the number of records, a
caller's summary (e.g. how many were skipped) and the SHA-256 of the final file. A later run on
the same output (`check_final`, also called by `open`) accepts it as done only when the settings
are the same and the file is unchanged; other settings or input (another `--limit`, say), an
edited file, or an `<output>` without a fingerprint (not written by this samgpu) are refused with
what differs, and `--overwrite` (`overwrite=True`) starts again.

One run per output: `open` takes an exclusive, non-blocking `flock` on `<output>.lock`, which
names the holder (pid, host, start time); a second run is refused with that name at once, before
it loads anything. The kernel drops the lock when its holder dies, so a lock file left by a
killed run is no obstacle. `<output>.partial` and `<output>.lock` are opened with O_NOFOLLOW: a
symbolic link planted there is refused, never followed.

Example: prompts.jsonl has 3 lines; the run is killed after records 0 and 2 finish.
out.jsonl.partial = header + {"index": 0, ...} + {"index": 2, ...}; out.jsonl does not exist.
Re-running generates record 1 only, then writes out.jsonl.samgpu.json and out.jsonl (records 0, 1,
2 in that order). Re-running once more says it is complete; with `--limit 2` it is refused
(num_records: 3 -> 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samgpu.errors import UserError
from samgpu.files import fsync_dir
from samgpu.inputs import (  # re-exported: the input side of the same files
    DEFAULT_TEXT_FIELDS,
    MESSAGES_FIELD,
    Record,
    fingerprint_file,
    parse_record,
    read_records,
)

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked
    fcntl = None

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
META_SUFFIX = ".samgpu.json"  # the final file's fingerprint, beside it
TMP_SUFFIX = ".tmp"  # final-file temporaries: `.<name>.<random>.tmp`
PARTIAL_FORMAT = "samgpu-partial-v1"
FINAL_FORMAT = "samgpu-output-v1"
_HEADER_START = f'{{"format": "{PARTIAL_FORMAT}"'.encode()  # how every header line begins
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

__all__ = [
    "DEFAULT_TEXT_FIELDS",
    "MESSAGES_FIELD",
    "OutputComplete",
    "OutputWriter",
    "Record",
    "check_final",
    "fingerprint_file",
    "parse_record",
    "read_records",
]


class OutputComplete(UserError):
    """`<output>` exists, complete for these very settings: nothing to do (exit status 0).
    `meta` is its fingerprint (num_records, summary, ...)."""

    exit_code = 0

    def __init__(self, message: str, meta: dict[str, Any]):
        super().__init__(message)
        self.meta = meta


def partial_path(path: str | os.PathLike) -> Path:
    return Path(path).with_name(Path(path).name + PARTIAL_SUFFIX)


def lock_path(path: str | os.PathLike) -> Path:
    return Path(path).with_name(Path(path).name + LOCK_SUFFIX)


def meta_path(path: str | os.PathLike) -> Path:
    return Path(path).with_name(Path(path).name + META_SUFFIX)


def num_partial_records(path: str | os.PathLike) -> int | None:
    """Records that `<path>.partial` holds (its complete lines after the header); None when
    there is no partial file."""
    try:
        with open(partial_path(path), "rb") as f:
            num_lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return None
    return max(num_lines - 1, 0)


def settings_diff(old: Any, new: dict[str, Any]) -> str:
    """`key: old -> new, ...` for the settings that differ."""
    old = old if isinstance(old, dict) else {}
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def check_final(path: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Nothing to say when `path` does not exist. Raises OutputComplete when it is the complete
    output of these settings (its fingerprint matches and the file is unchanged), and a
    UserError (exit 2) naming the difference and --overwrite otherwise. Creates nothing."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        return
    settings = json.loads(json.dumps(settings))
    redo = "pass --overwrite to generate it again, or choose another --output"
    try:
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"output {str(path)!r} already exists, but not as a finished samgpu output (no"
            f" {meta_path(path).name} fingerprint beside it); {redo}"
        ) from None
    except (OSError, ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FINAL_FORMAT:
        raise UserError(f"{meta_path(path)} is damaged; {redo}")
    if meta.get("settings") != settings:
        raise UserError(
            f"output {str(path)!r} already exists, made from another input or settings"
            f" ({settings_diff(meta.get('settings'), settings)}); {redo}"
        )
    if _sha256_file(path) != meta.get("sha256"):
        raise UserError(f"output {str(path)!r} was changed after samgpu finished it; {redo}")
    raise OutputComplete(
        f"output {str(path)!r} already exists and is complete ({meta.get('num_records')}"
        " records, same input and settings); pass --overwrite to generate it again",
        meta,
    )


@dataclass
class OutputWriter:
    """Append finished records to `<path>.partial`; `finalize()` writes `<path>` atomically.

    `settings` is any JSON-able dict of what determines the text (plus the input fingerprint); a
    partial file written under other settings is refused rather than silently mixed. One writer
    per output at a time: `open` takes an exclusive lock (`<path>.lock`) held until `close` or
    `finalize`. Use as a context manager, or call `close()` on every path.
    """

    path: Path
    settings: dict[str, Any]
    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> output record
    _fd: int | None = None  # the partial file, O_APPEND
    _lock: _OutputLock | None = None

    @property
    def partial_path(self) -> Path:
        return partial_path(self.path)

    @property
    def lock_path(self) -> Path:
        return lock_path(self.path)

    @classmethod
    def open(
        cls, path: str | os.PathLike, settings: dict[str, Any], *, overwrite: bool = False
    ) -> OutputWriter:
        """Lock the output, then resume from an existing partial file or start one whose header
        is on disk (written, flushed, fsynced) before this returns, so a run killed at any later
        point resumes. UserError if `path` is a folder, its folder is missing, another process
        holds the output (exit 1; the message names its pid), `path` is complete (exit 0, unless
        overwrite), `<path>.partial` or `<path>.lock` is a symbolic link, or the partial file
        belongs to other settings."""
        w = cls(Path(path), json.loads(json.dumps(settings)))
        if w.path.is_dir():
            raise UserError(f"output {str(path)!r} is a directory, expected a file name")
        if not w.path.parent.is_dir():
            raise UserError(f"output folder {str(w.path.parent)!r} does not exist")
        w._lock = _OutputLock.acquire(w.lock_path, str(path))
        try:
            w._open_partial(overwrite)
        except BaseException:
            w.close()
            raise
        return w

    def _open_partial(self, overwrite: bool) -> None:
        # Under the lock: every final-file temporary in the folder is a dead run's.
        for leftover in self.path.parent.glob(f".{_glob_escape(self.path.name)}.*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
        if overwrite:
            self.path.unlink(missing_ok=True)
            self.partial_path.unlink(missing_ok=True)
        else:
            try:
                check_final(self.path, self.settings)
            except OutputComplete:
                # a crash between the final rename and the partial's removal leaves both
                self.partial_path.unlink(missing_ok=True)
                raise
        meta_path(self.path).unlink(missing_ok=True)  # no final file: a fingerprint is stale
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC
        try:
            self._fd = os.open(self.partial_path, flags, 0o644)
        except OSError as e:
            if self.partial_path.is_symlink():
                raise UserError(
                    f"{self.partial_path} is a symbolic link; samgpu does not follow one there"
                    " (remove it or choose another --output)"
                ) from None
            raise UserError(f"cannot open {self.partial_path}: {e.strerror}") from None
        raw = _read_all(self._fd)
        if self._is_unstarted(raw):  # empty, or killed while writing the header: nothing done
            self._start()
        else:
            self._load_partial(raw)

    def _start(self) -> None:
        """(Re)write the partial file as a bare header, durably."""
        os.ftruncate(self._fd, 0)
        self._write(self._line({"format": PARTIAL_FORMAT, "settings": self.settings}))
        self.flush()
        fsync_dir(self.partial_path.parent)  # the file's name is durable too

    @staticmethod
    def _is_unstarted(raw: bytes) -> bool:
        """No complete header line: empty, a torn prefix of a header, or a zero-filled tail."""
        if b"\n" in raw:
            return False
        head = raw.rstrip(b"\0")
        return _HEADER_START.startswith(head) or head.startswith(_HEADER_START)

    def _load_partial(self, raw: bytes) -> None:
        keep = raw[: raw.rfind(b"\n") + 1]  # drop a torn last line (crash mid-write)
        lines = keep.decode("utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except (json.JSONDecodeError, RecursionError):
            header = None
        if not isinstance(header, dict) or header.get("format") != PARTIAL_FORMAT:
            raise UserError(
                f"{self.partial_path} is not a samgpu partial output; remove it or choose another"
                " --output"
            )
        if header.get("settings") != self.settings and len(lines) == 1:
            self._start()  # a header alone (killed during start-up): nothing done to keep
            return
        if header.get("settings") != self.settings:
            detail = settings_diff(header.get("settings"), self.settings)
            raise UserError(
                f"{self.partial_path} was written for another input or settings ({detail});"
                " re-run with the same settings to resume, or pass --overwrite to start again"
            )
        for n, text in enumerate(lines[1:], start=2):
            try:
                item = json.loads(text)
                self.done[int(item["index"])] = item["record"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError):
                raise UserError(
                    f"{self.partial_path}:{n}: damaged line; remove the file or pass --overwrite"
                ) from None
        if len(keep) != len(raw):
            os.ftruncate(self._fd, len(keep))

    @staticmethod
    def _line(obj: Any) -> bytes:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise RuntimeError(f"{self.partial_path} is closed")
        view = memoryview(data)
        while view:  # one write appends the whole line in practice; loop for short writes
            view = view[os.write(self._fd, view) :]

    def add(self, index: int, record: dict[str, Any]) -> None:
        """Append one record (handed to the OS at once: it survives a kill of this process; call
        flush() for a power cut)."""
        self._write(self._line({"index": index, "record": record}))
        self.done[index] = record

    def append(self, index: int, record: dict[str, Any]) -> None:
        """Append one record as it finishes and make it durable (fsync): what a streaming loop
        calls per finished record. An fsync costs ~0.1-10 ms; for many small records per second,
        add() each and flush() once per round instead."""
        self.add(index, record)
        self.flush()

    def add_many(self, items: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Append several records, then one fsync."""
        for index, record in items:
            self.add(index, record)
        self.flush()

    def flush(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self, *, discard_unstarted: bool = False) -> None:
        """fsync and close the partial file and release the lock (idempotent). With
        discard_unstarted, a partial file that holds no record is removed (a set-up that failed
        leaves nothing behind)."""
        try:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if discard_unstarted and not self.done:
                    self.partial_path.unlink(missing_ok=True)
        finally:
            if self._lock is not None:
                lock, self._lock = self._lock, None
                lock.release()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a writer dropped without close() still releases the lock
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown; nothing to report to
            pass

    def finalize(self, num_records: int, summary: dict[str, Any] | None = None) -> None:
        """Write the final file in input order and its fingerprint (`<path>.samgpu.json`: the
        settings, num_records, `summary`, the file's SHA-256), each to a unique temporary,
        fsynced and renamed into place (the fingerprint first: a crash between the two renames
        leaves the partial file, which resumes); remove the partial file, release the lock."""
        missing = [i for i in range(num_records) if i not in self.done]
        if missing:
            raise RuntimeError(
                f"finalize with {len(missing)} records unfinished (first {missing[0]})"
            )
        if self._lock is None:
            raise RuntimeError(f"finalize of {self.path} after close")
        data = b"".join(
            (json.dumps(self.done[i], ensure_ascii=False) + "\n").encode("utf-8")
            for i in range(num_records)
        )
        meta = {
            "format": FINAL_FORMAT,
            "settings": self.settings,
            "num_records": num_records,
            "summary": summary or {},
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        meta_data = (json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
        _replace_durably(meta_path(self.path), meta_data)
        _replace_durably(self.path, data)
        fsync_dir(self.path.parent)
        self.partial_path.unlink(missing_ok=True)
        self.close()


def _replace_durably(dest: Path, data: bytes) -> None:
    """Write `data` to a fresh `.<name>.<random>.tmp` beside `dest` (mkstemp: O_EXCL, so no
    planted symlink is followed and no two runs share one), fsync, rename onto `dest`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TMP_SUFFIX, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp made it 0600
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _OutputLock:
    """An exclusive, non-blocking `flock` on `<output>.lock`, which holds the owner's pid, host
    and start time for the message another run prints. The kernel releases the lock when the
    process dies, so a lock file left by a killed run is no obstacle; `release` removes it."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, path: Path, output: str) -> _OutputLock:
        if fcntl is None:  # no flock (Windows): no protection, as before
            return cls(path, -1)
        for _ in range(8):  # retry if the file was removed between our open and our lock
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC, 0o644)
            except OSError as e:
                if path.is_symlink():
                    raise UserError(
                        f"{path} is a symbolic link; samgpu does not follow one there (remove"
                        " it or choose another --output)"
                    ) from None
                raise UserError(f"cannot create the lock file {path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_all(fd).decode("utf-8", errors="replace").strip()
                os.close(fd)
                raise UserError(
                    f"output {output!r} is being written by another samgpu process"
                    f" ({owner or 'pid unknown'}; lock {path}); wait for it to finish, or"
                    " choose another --output",
                    exit_code=1,
                ) from None
            except OSError as e:  # ENOLCK, EOPNOTSUPP: a file system without flock
                warnings.warn(
                    f"samgpu: cannot lock {path} ({e.strerror}); nothing stops a second run on"
                    f" {output!r} from mixing its records in",
                    stacklevel=3,
                )
            try:
                same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                owner = f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n"
                os.pwrite(fd, owner.encode(), 0)
                return cls(path, fd)
            os.close(fd)  # the holder before us removed it: lock the new one
        raise UserError(f"could not lock {path}: it keeps being replaced", exit_code=1)

    def release(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            self.path.unlink(missing_ok=True)  # while locked: a waiting opener then retries
        finally:
            os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks, pos = [], 0
    while chunk := os.pread(fd, 1 << 20, pos):
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
