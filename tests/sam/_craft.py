"""Crafted index files for the validation tests: any array values, any header, checksums
recomputed (a file whose checksums are right but whose values lie, as a hostile or buggy tool
would write it)."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from samgpu.sam import ARRAY_NAMES, FORMAT_VERSION, MAGIC, SamIndex

PREFIX = struct.Struct("<8sIII")
HEADER_ROOM = 8192  # bytes reserved for the header, so header edits keep the arrays in place


def arrays_of(index: SamIndex) -> dict[str, np.ndarray]:
    """int32 copies of the index's arrays (safe to mutate)."""
    return {name: getattr(index, name).numpy().astype(np.int32).copy() for name in ARRAY_NAMES}


def layout(arrays: dict[str, np.ndarray], vocab_size: int, eos_id: int) -> tuple[dict, int]:
    """The header a correct writer would produce for `arrays` (every array int32, CRCs right)."""
    entries, pos = [], HEADER_ROOM
    for name in ARRAY_NAMES:
        arr = np.ascontiguousarray(arrays[name], dtype=np.int32)
        entries.append(
            {
                "name": name,
                "offset": pos,
                "count": int(arr.size),
                "crc32": zlib.crc32(arr.tobytes()),
                "dtype": "int32",
            }
        )
        pos += (arr.nbytes + 63) // 64 * 64
    meta = {
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "tokenizer_fingerprint": "fp",
        "file_size": pos,
        "extra": {},
        "arrays": entries,
    }
    return meta, pos


def file_bytes(
    arrays: dict[str, np.ndarray],
    vocab_size: int,
    eos_id: int,
    *,
    header_edit: Callable[[dict], object] | None = None,
    version: int = FORMAT_VERSION,
    raw_header: bytes | None = None,
    text_edit: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """A whole index file. header_edit(meta) may change the header in place (the arrays stay
    where the unedited header put them); raw_header replaces the JSON text outright; text_edit
    rewrites the JSON text (for values too deep to build as Python objects). The header CRC is
    always recomputed."""
    meta, size = layout(arrays, vocab_size, eos_id)
    buf = bytearray(size)
    for e, name in zip(meta["arrays"], ARRAY_NAMES, strict=True):
        data = np.ascontiguousarray(arrays[name], dtype=np.int32).tobytes()
        buf[e["offset"] : e["offset"] + len(data)] = data
    if header_edit is not None:
        header_edit(meta)
    header = raw_header if raw_header is not None else json.dumps(meta).encode()
    if text_edit is not None:
        header = text_edit(header)
    head = PREFIX.pack(MAGIC, version, len(header), zlib.crc32(header)) + header
    buf[: len(head)] = head  # a header longer than HEADER_ROOM overwrites arrays: still a file
    return bytes(buf[: max(size, len(head))])


def write(path: Path, arrays: dict[str, np.ndarray], vocab_size: int, eos_id: int, **kw) -> Path:
    path.write_bytes(file_bytes(arrays, vocab_size, eos_id, **kw))
    return path
