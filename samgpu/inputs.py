"""JSONL prompt files: the input side of `samgpu generate --input` (the output side, with resume,
is samgpu.io, which re-exports these names).

One JSON object per line. The prompt is read from a text field (`prompt`, then `text`, or the
field named by `--field`) or from chat `messages` (a list of {"role", "content"} objects, to which
the chat template is applied). Blank lines are skipped; a line that is a bare JSON string is a
prompt; a UTF-8 byte-order mark at the start is ignored. Every other deviation is an `InputError`
naming the file and the 1-based line number (and, for text that is not UTF-8, the column and the
byte offset in the file). Records are identified by their 0-based position among the file's
records (`index`), which is what resume keys on.

Example: lines `{"prompt": "Hi"}`, ``, `{"messages": [{"role": "user", "content": "2+2?"}]}` ->
Record(index=0, line=1, prompt="Hi"), Record(index=1, line=3, messages=[...]).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samgpu.errors import InputError

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
        if not isinstance(m["role"], str) or not isinstance(m["content"], str):
            raise InputError(
                f"{where}: {name}[{i}]: 'role' and 'content' must be strings (content parts are not"
                f" supported: join their text), got {m!r:.80}"
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


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(1-based line number, JSON value) of every non-blank line of a JSONL file, read as bytes
    (gzip-decompressed when the name ends in .gz). InputError naming file and line for a line that
    is not UTF-8 (with its column and byte offset) or not JSON; a UTF-8 byte-order mark at the
    start is ignored. What the values must be is the caller's to check."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    offset = 0  # byte offset of the current line in the (decompressed) file
    with opener(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
            except UnicodeDecodeError as e:
                column = len(raw[: e.start].decode("utf-8", errors="replace")) + 1
                raise InputError(
                    f"{_where(path, line_no)}: not UTF-8 text ({e.reason} at column {column},"
                    f" byte {offset + e.start} of the file); save the file as UTF-8"
                ) from None
            offset += len(raw)
            if not text:
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{_where(path, line_no)}: not valid JSON ({e.msg} at column {e.colno});"
                    " expected one JSON object per line"
                ) from None
            except RecursionError:
                raise InputError(
                    f"{_where(path, line_no)}: JSON nested too deeply; expected one JSON"
                    " object per line"
                ) from None
            yield line_no, value


def read_records(path: str | os.PathLike, *, field: str | None = None) -> list[Record]:
    """Read a JSONL prompt file. Raises InputError (file and line number) on any malformed line;
    text that is not UTF-8 is reported by line, column and byte offset in the file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file {str(path)!r} does not exist")
    if p.is_dir():
        raise InputError(f"input {str(path)!r} is a directory, expected a .jsonl file")
    records: list[Record] = []
    for line_no, obj in iter_jsonl(path):
        records.append(parse_record(obj, index=len(records), line=line_no, path=path, field=field))
    if not records:
        raise InputError(f"input file {str(path)!r} has no records")
    return records


def fingerprint_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
