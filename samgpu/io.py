"""JSONL in, JSONL out, with resume: the file side of `samgpu generate --input/--output`.

Input: one JSON object per line. The prompt is read from a text field (`prompt`, then `text`, or
the field named by `--field`) or from chat `messages` (a list of {"role", "content"} objects, to
which the chat template is applied). Blank lines are skipped; a line that is a bare JSON string is
a prompt. Every other deviation is an `InputError` naming the file and the 1-based line number.

Output: the input object with the result fields added (`completion`, `finish_reason`,
`num_tokens`, `stats`), one line per input record, in input order. Records are identified by their
0-based position in the input file (`index`), which is what resume keys on.

Crash safety and resume (DESIGN.md §9): finished records are appended, as they finish, to
`<output>.partial`, whose first line is a header fingerprinting the input file and the settings
that change the text (model, sampling, max_new_tokens, ...). Only when every record is done is the
final file written, to `<output>.tmp`, flushed, fsynced and renamed onto `<output>`; the partial
file is then removed. A final file therefore always looks complete because it is. Re-running the
same command finds the partial file, keeps its finished records (a torn last line from a crash is
dropped) and generates only the rest. Settings that do not change the text (method, batch size,
device) may differ between runs, so a run that ran out of memory can be resumed with a smaller
`--batch-size`.

Example: prompts.jsonl has 3 lines; the run is killed after records 0 and 2 finish.
out.jsonl.partial = header + {"index": 0, ...} + {"index": 2, ...}; out.jsonl does not exist.
Re-running generates record 1 only, then writes out.jsonl with records 0, 1, 2 in that order.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samgpu.errors import InputError, UserError

PARTIAL_SUFFIX = ".partial"
TMP_SUFFIX = ".tmp"
PARTIAL_FORMAT = "samgpu-partial-v1"
DEFAULT_TEXT_FIELDS = ("prompt", "text")
MESSAGES_FIELD = "messages"


@dataclass
class Record:
    """One input line."""

    index: int  # 0-based position among the input's records (resume and ordering key)
    line: int  # 1-based line number in the input file
    data: dict[str, Any]  # the input object, copied to the output record
    prompt: str | None = None  # plain prompt text (None when `messages` is used)
    messages: list[dict[str, Any]] | None = None  # chat messages

    @property
    def is_empty(self) -> bool:
        if self.messages is not None:
            return not any(str(m.get("content") or "").strip() for m in self.messages)
        return not (self.prompt or "").strip()


def _where(path: str | os.PathLike, line: int) -> str:
    return f"{path}:{line}"


def _parse_messages(value: Any, where: str, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InputError(
            f"{where}: field {name!r} must be a non-empty list of {{'role', 'content'}} objects,"
            f" got {type(value).__name__}"
        )
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(
                f"{where}: {name}[{i}] must be an object with 'role' and 'content', got {m!r:.80}"
            )
    return value


def parse_record(
    obj: Any,
    *,
    index: int,
    line: int,
    path: str | os.PathLike = "<input>",
    field: str | None = None,
) -> Record:
    """One decoded JSON value -> Record. `field` names the prompt field (text, or a messages list);
    None tries `prompt`, `text`, then `messages`."""
    where = _where(path, line)
    if isinstance(obj, str):
        if field is not None:
            raise InputError(f"{where}: expected a JSON object with field {field!r}, got a string")
        return Record(index=index, line=line, data={"prompt": obj}, prompt=obj)
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    names = (field,) if field is not None else (*DEFAULT_TEXT_FIELDS, MESSAGES_FIELD)
    for name in names:
        if name not in obj:
            continue
        value = obj[name]
        if isinstance(value, list) or (name == MESSAGES_FIELD and field is None):
            msgs = _parse_messages(value, where, name)
            return Record(index=index, line=line, data=obj, messages=msgs)
        if not isinstance(value, str):
            raise InputError(
                f"{where}: field {name!r} must be a string (or a list of chat messages),"
                f" got {type(value).__name__}"
            )
        return Record(index=index, line=line, data=obj, prompt=value)
    keys = ", ".join(map(repr, list(obj)[:8])) or "none"
    if field is not None:
        raise InputError(f"{where}: record has no field {field!r} (its fields: {keys})")
    raise InputError(
        f"{where}: record has no 'prompt', 'text' or 'messages' field (its fields: {keys});"
        " name the prompt field with --field NAME"
    )


def read_records(path: str | os.PathLike, *, field: str | None = None) -> list[Record]:
    """Read a JSONL prompt file. Raises InputError (file and line number) on any malformed line."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file {str(path)!r} does not exist")
    if p.is_dir():
        raise InputError(f"input {str(path)!r} is a directory, expected a .jsonl file")
    records: list[Record] = []
    try:
        with open(p, encoding="utf-8") as f:
            for line_no, raw in enumerate(f, start=1):
                text = raw.strip()
                if not text:
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise InputError(
                        f"{_where(path, line_no)}: not valid JSON ({e.msg} at column {e.colno});"
                        " expected one JSON object per line"
                    ) from None
                records.append(
                    parse_record(obj, index=len(records), line=line_no, path=path, field=field)
                )
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not records:
        raise InputError(f"input file {str(path)!r} has no records")
    return records


def fingerprint_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class OutputWriter:
    """Append finished records to `<path>.partial`; `finalize()` writes `<path>` atomically.

    `settings` is any JSON-able dict of what determines the text (plus the input fingerprint); a
    partial file written under other settings is refused rather than silently mixed.
    """

    path: Path
    settings: dict[str, Any]
    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> output record
    _file: Any = None

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(self.path.name + PARTIAL_SUFFIX)

    @property
    def tmp_path(self) -> Path:
        return self.path.with_name(self.path.name + TMP_SUFFIX)

    @classmethod
    def open(
        cls, path: str | os.PathLike, settings: dict[str, Any], *, overwrite: bool = False
    ) -> OutputWriter:
        """Open for writing, resuming from an existing partial file. Raises UserError if `path`
        exists (unless overwrite) or if the partial file belongs to other settings."""
        w = cls(Path(path), json.loads(json.dumps(settings)))
        if w.path.is_dir():
            raise UserError(f"output {str(path)!r} is a directory, expected a file name")
        if not w.path.parent.exists():
            raise UserError(f"output folder {str(w.path.parent)!r} does not exist")
        if overwrite:
            for p in (w.path, w.partial_path, w.tmp_path):
                p.unlink(missing_ok=True)
        elif w.path.exists():
            raise UserError(
                f"output {str(path)!r} already exists and is complete;"
                " pass --overwrite to generate it again",
                exit_code=0,
            )
        if w.partial_path.exists():
            w._load_partial()
        w._file = open(w.partial_path, "a", encoding="utf-8")
        if not w._file.tell():
            w._write_line({"format": PARTIAL_FORMAT, "settings": w.settings})
        return w

    def _load_partial(self) -> None:
        raw = self.partial_path.read_bytes()
        keep = raw[: raw.rfind(b"\n") + 1]  # drop a torn last line (crash mid-write)
        lines = keep.decode("utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != PARTIAL_FORMAT:
            raise UserError(
                f"{self.partial_path} is not a samgpu partial output; remove it or choose another"
                " --output"
            )
        if header.get("settings") != self.settings:
            old, new = header.get("settings") or {}, self.settings
            diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise UserError(
                f"{self.partial_path} was written for another input or settings ({detail});"
                " re-run with the same settings to resume, or pass --overwrite to start again"
            )
        for n, text in enumerate(lines[1:], start=2):
            try:
                item = json.loads(text)
                self.done[int(item["index"])] = item["record"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UserError(
                    f"{self.partial_path}:{n}: damaged line; remove the file or pass --overwrite"
                ) from None
        if len(keep) != len(raw):
            with open(self.partial_path, "r+b") as f:
                f.truncate(len(keep))

    def _write_line(self, obj: Any) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def add(self, index: int, record: dict[str, Any]) -> None:
        self.done[index] = record
        self._write_line({"index": index, "record": record})

    def add_many(self, items: Iterable[tuple[int, dict[str, Any]]]) -> None:
        for index, record in items:
            self.add(index, record)
        self.flush()

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self.flush()
            self._file.close()

    def finalize(self, num_records: int) -> None:
        """Write the final file in input order (atomic rename) and remove the partial file."""
        missing = [i for i in range(num_records) if i not in self.done]
        if missing:
            raise RuntimeError(
                f"finalize with {len(missing)} records unfinished (first {missing[0]})"
            )
        self.close()
        with open(self.tmp_path, "w", encoding="utf-8") as f:
            for i in range(num_records):
                f.write(json.dumps(self.done[i], ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.tmp_path, self.path)
        self.partial_path.unlink(missing_ok=True)
