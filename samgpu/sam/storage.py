"""One-file on-disk format of a SamIndex, memory-mapped on load.

Layout (little-endian):
  offset 0   8 B   magic b"SAMGPUIX"
         8   u32   format version (FORMAT_VERSION; version 1 files are read too)
        12   u32   header length H (bytes of JSON)
        16   u32   crc32 of the JSON header
        20   H B   JSON header: vocab_size, eos_id, tokenizer_fingerprint, file_size, extra (JSON
                   provenance: corpus, build rate), and per array {name, offset, count, crc32,
                   dtype}; dtype "int32", or "uint16" for the token arrays (edge_token, tokens)
                   when vocab_size <= 65,536 (version 1: int32 for all, no dtype key)
  then every array at a 64-byte aligned offset, in ARRAY_NAMES order; the file ends at file_size.
In memory every array is int32 (uint16 arrays are widened on load, the others stay memory-mapped).

Example header: {"vocab_size": 49152, "eos_id": 2, "tokenizer_fingerprint": "9f2c...",
 "file_size": 1234560, "extra": {...},
 "arrays": [{"name": "length", "offset": 512, "count": 4097, "crc32": 1234, "dtype": "int32"},
            ...]}

Checks on load, each a ValueError naming the file and the fix: wrong magic, other format version,
short/truncated file, header CRC mismatch, a header that is not the schema above (missing keys,
wrong types, sizes outside int32, arrays overlapping or outside the file), payload CRC mismatch
(verify=True), then the structural validation (SamIndex.validate(deep=False): ids in range, links
acyclic, ...; samgpu/sam/_validate.py) on every load, so no kernel ever sees an unchecked index.
CRC-32 (zlib) ran at ~1 GB/s on the 2-core dev CPU (blake2b: 0.25 GB/s), so verifying costs about a
second per GB of index; `load(verify=False)` skips it for trusted files (not the validation).

Writing: a temporary `.<name>.tmp-<host>-<pid>-<random>` in the same folder (created exclusively,
so a planted symlink is never followed), fsynced, renamed over `<name>`; leftovers of killed
writers are removed by the next save (samgpu/files.py). A loaded index is a memory map of
the file: never rewrite an index file in place while a process uses it (truncating a mapped file
kills its readers with SIGBUS). Saving over it is safe, because the rename leaves the mapped old
file intact until its last reader closes it.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
from pathlib import Path

import numpy as np
import torch

from samgpu import files

# The index's arrays, in their on-disk order (every one 1-D int32 in memory).
ARRAY_NAMES: tuple[str, ...] = (
    "length",
    "link",
    "endpos",
    "count",
    "edge_offsets",
    "edge_token",
    "edge_dst",
    "root_next",
    "tokens",
)

MAGIC: bytes = b"SAMGPUIX"
FORMAT_VERSION: int = 2
READABLE_VERSIONS: tuple[int, ...] = (1, 2)
# Arrays of token ids, stored as uint16 when every id fits (2 bytes per edge and per text token).
TOKEN_ARRAYS: tuple[str, ...] = ("edge_token", "tokens")
U16_VOCAB: int = 1 << 16
_DTYPES = {"int32": np.int32, "uint16": np.uint16}
ALIGN: int = files.ALIGN
MAX_HEADER_BYTES: int = 1 << 24  # a real header is ~2 KB plus the provenance in `extra`
MAX_COUNT: int = 2**31 - 1  # ids and offsets are int32


def fix_hint(path: Path) -> str:
    return (
        "build a new index with `samgpu index build --out NEW.samidx` (with --corpus/--tokenizer "
        f"as when {path.name} was built) and pass that"
    )


def save_index(index, path: str | os.PathLike) -> Path:
    """Write `index` (a SamIndex: its ARRAY_NAMES tensors, vocab_size, eos_id,
    tokenizer_fingerprint, extra) to `path` atomically (a temporary file in the same folder,
    then rename)."""
    path = Path(path)
    arrays = {name: np.ascontiguousarray(getattr(index, name).numpy()) for name in ARRAY_NAMES}
    for name, arr in arrays.items():
        if arr.dtype != np.int32 or arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D int32 array, got {arr.dtype} {arr.shape}")
    if index.vocab_size <= U16_VOCAB:
        for name in TOKEN_ARRAYS:  # ids are checked < vocab_size at build; checked again here
            arr = arrays[name]
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= U16_VOCAB):
                raise ValueError(f"{name} holds ids outside [0, {U16_VOCAB})")
            arrays[name] = arr.astype(np.uint16)
    entries = [
        {
            "name": n,
            "offset": 0,
            "count": int(a.size),
            "crc32": files.crc32(a),
            "dtype": a.dtype.name,
        }
        for n, a in arrays.items()
    ]
    meta = {
        "vocab_size": int(index.vocab_size),
        "eos_id": int(index.eos_id),
        "tokenizer_fingerprint": index.tokenizer_fingerprint,
        "file_size": 0,
        "extra": index.extra,
        "arrays": entries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, re.escape(path.name))
    files.write_prefixed(path, MAGIC, FORMAT_VERSION, meta, arrays)
    return path


def remove_stale_temporaries(folder: str | os.PathLike, name_regex: str) -> list[Path]:
    """Remove dead writers' save_index temporaries in `folder` of the index files whose names
    match `name_regex` (e.g. re.escape("x.samidx")); both tagged names and the untagged
    `.<name>.tmp-<pid>` of older versions. Returns the removed paths."""
    pattern = re.compile(rf"\.(?:{name_regex})\.tmp-(?P<tag>(?:[0-9a-f]{{8}}-)?\d+)(?:-\w+)?")
    return files.remove_stale(Path(folder), pattern)


def read_header(path: str | os.PathLike) -> dict:
    """Parse and check the prefix and JSON header (cheap: reads only the first bytes). Returns the
    header with every field checked against the schema (module docstring) and each array's
    `dtype` filled in; any deviation is one ValueError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"SAM index {path} is a folder; give the index file's path")
    if not path.is_file():
        raise ValueError(f"SAM index {path} does not exist; build it with `samgpu index build`")
    version, header, size = files.read_prefixed_header(
        path,
        what="SAM index",
        magic=MAGIC,
        versions=READABLE_VERSIONS,
        max_header=MAX_HEADER_BYTES,
        hint=fix_hint(path),
        make_hint="`samgpu index build --out NEW.samidx` builds one",
    )
    try:
        meta = json.loads(header)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise ValueError(
            f"SAM index {path} has an unreadable header ({type(exc).__name__}: {exc}); "
            f"{fix_hint(path)}"
        ) from None
    try:
        _check_header(meta, version, files.PREFIX.size + len(header))
    except _HeaderError as exc:
        raise ValueError(
            f"SAM index {path} has a malformed header ({exc}); {fix_hint(path)}"
        ) from None
    file_size = meta["file_size"]
    if size < file_size:
        raise ValueError(
            f"SAM index {path} is truncated: {size} bytes, header says {file_size}; "
            f"{fix_hint(path)}"
        )
    if size > file_size:
        raise ValueError(
            f"SAM index {path} has {size - file_size} trailing bytes after its arrays; "
            f"{fix_hint(path)}"
        )
    return meta


class _HeaderError(Exception):
    """A header field that is not the schema; the message names the field."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist = 2, 40, 40, 10


def _show(value) -> str:
    """Short repr of a header value (bounded depth: a nested value cannot recurse)."""
    return _REPR.repr(value)


def _int_field(obj: dict, key: str, lo: int, hi: int, where: str = "") -> int:
    if key not in obj:
        raise _HeaderError(f"{where}{key} is missing")
    v = obj[key]
    if type(v) is not int or not lo <= v <= hi:  # bool is an int: refused too
        raise _HeaderError(f"{where}{key} must be an integer in [{lo}, {hi}], got {_show(v)}")
    return v


def _check_header(meta, version: int, header_end: int) -> None:
    """The JSON header's schema; fills in the version 1 default dtype. Bounds, not consistency:
    the arrays' sizes are checked against each other by SamIndex.validate after the map."""
    if not isinstance(meta, dict):
        raise _HeaderError(f"the header must be a JSON object, got {type(meta).__name__}")
    vocab_size = _int_field(meta, "vocab_size", 1, MAX_COUNT)
    _int_field(meta, "eos_id", 0, vocab_size - 1)
    file_size = _int_field(meta, "file_size", header_end, 2**63 - 1)
    if not isinstance(meta.get("tokenizer_fingerprint"), str):
        raise _HeaderError("tokenizer_fingerprint must be a string")
    if meta.get("extra") is not None and not isinstance(meta["extra"], dict):
        raise _HeaderError(f"extra must be an object, got {type(meta['extra']).__name__}")
    entries = meta.get("arrays")
    if not isinstance(entries, list) or len(entries) != len(ARRAY_NAMES):
        raise _HeaderError(f"arrays must be a list of {len(ARRAY_NAMES)} entries")
    end = header_end
    for name, e in zip(ARRAY_NAMES, entries, strict=True):
        if not isinstance(e, dict):
            raise _HeaderError(f"array entry {name} must be an object")
        if e.get("name") != name:
            names = [x.get("name") if isinstance(x, dict) else None for x in entries]
            raise _HeaderError(f"arrays are {_show(names)}, expected {list(ARRAY_NAMES)}")
        where = f"array {name}: "
        if version == 1:
            e.setdefault("dtype", "int32")
        dtype = e.get("dtype")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _HeaderError(f"{where}dtype {_show(dtype)} is not allowed")
        if dtype != "int32" and name not in TOKEN_ARRAYS:
            raise _HeaderError(f"{where}dtype {_show(dtype)} is not allowed")
        offset = _int_field(e, "offset", end, file_size, where)
        count = _int_field(e, "count", 0, MAX_COUNT, where)
        _int_field(e, "crc32", 0, 2**32 - 1, where)
        if offset % ALIGN:
            raise _HeaderError(f"{where}offset {offset} is not a multiple of {ALIGN}")
        end = offset + np.dtype(_DTYPES[dtype]).itemsize * count
        if end > file_size:
            raise _HeaderError(f"{where}lies outside the file (ends at {end} > {file_size})")


def read_index(
    path: str | os.PathLike, *, mmap: bool = True, verify: bool = True
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, arrays) of an index file; arrays are int32 torch views of a copy-on-write memory
    map when mmap=True (do not rewrite the file in place while it is in use: see the module
    docstring). verify=False skips the checksums. SamIndex.load builds and validates the index."""
    path = Path(path)
    meta = read_header(path)
    try:
        if mmap:
            # mode "c": private copy-on-write mapping, so the tensors are writable without a
            # copy (torch warns on read-only numpy arrays) and nothing is written to the file.
            raw = np.memmap(path, dtype=np.uint8, mode="c")
        else:
            raw = np.fromfile(path, dtype=np.uint8)
    except (ValueError, OSError) as exc:  # e.g. truncated since read_header
        raise ValueError(f"SAM index {path} cannot be mapped ({exc}); load it again") from None
    if raw.size != meta["file_size"]:
        raise ValueError(f"SAM index {path} changed while it was being loaded; load it again")
    arrays = {}
    for e in meta["arrays"]:
        dtype = np.dtype(_DTYPES[e["dtype"]])
        arr = raw[e["offset"] : e["offset"] + dtype.itemsize * e["count"]].view(dtype)
        if verify and files.crc32(arr) != e["crc32"]:
            raise ValueError(
                f"SAM index {path} is corrupt: checksum mismatch in array {e['name']}; "
                f"{fix_hint(path)}"
            )
        arrays[e["name"]] = torch.from_numpy(arr if dtype == np.int32 else arr.astype(np.int32))
    return meta, arrays
