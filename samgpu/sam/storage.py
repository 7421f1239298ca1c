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
short/truncated file, header CRC mismatch, unparsable header, payload CRC mismatch (verify=True),
shape inconsistencies (SamIndex.validate runs on small indices and on request).
CRC-32 (zlib) ran at ~1 GB/s on the 2-core dev CPU (blake2b: 0.25 GB/s), so verifying costs about a
second per GB of index; `load(verify=False)` skips it for trusted files.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from samgpu.sam.index import ARRAY_NAMES, SamIndex

MAGIC: bytes = b"SAMGPUIX"
FORMAT_VERSION: int = 2
READABLE_VERSIONS: tuple[int, ...] = (1, 2)
# Arrays of token ids, stored as uint16 when every id fits (2 bytes per edge and per text token).
TOKEN_ARRAYS: tuple[str, ...] = ("edge_token", "tokens")
U16_VOCAB: int = 1 << 16
_DTYPES = {"int32": np.int32, "uint16": np.uint16}
ALIGN: int = 64
_PREFIX = struct.Struct("<8sIII")  # magic, version, header length, header crc32
_CRC_BLOCK = 1 << 24


def _fix(path: Path) -> str:
    return (
        f"rebuild it with `samgpu index build --out {path}` (add --corpus/--tokenizer as when it "
        "was built)"
    )


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _crc(buf) -> int:
    view = memoryview(buf).cast("B")
    crc = 0
    for lo in range(0, len(view), _CRC_BLOCK):
        crc = zlib.crc32(view[lo : lo + _CRC_BLOCK], crc)
    return crc


def save_index(index: SamIndex, path: str | os.PathLike) -> Path:
    """Write `index` to `path` atomically (a temporary file in the same folder, then rename)."""
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
            "crc32": _crc(a),
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
    # Offsets depend on the header length, which depends on the offsets' digits: reserve generously.
    for _ in range(3):
        header = json.dumps(meta, sort_keys=True).encode()
        pos = _align(_PREFIX.size + len(header) + 64)
        for e in entries:
            e["offset"] = pos
            pos = _align(pos + arrays[e["name"]].itemsize * e["count"])
        meta["file_size"] = pos
    header = json.dumps(meta, sort_keys=True).encode()
    if _PREFIX.size + len(header) > entries[0]["offset"]:
        raise RuntimeError("header does not fit before the first array")  # internal invariant
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header)))
            f.write(header)
            for e in entries:
                f.write(b"\0" * (e["offset"] - f.tell()))
                f.write(arrays[e["name"]].tobytes())
            f.write(b"\0" * (meta["file_size"] - f.tell()))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_header(path: str | os.PathLike) -> dict:
    """Parse and check the prefix and JSON header (cheap: reads only the first bytes)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"SAM index {path} does not exist; build it with `samgpu index build`")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise ValueError(f"SAM index {path} is truncated ({size} bytes); {_fix(path)}")
        magic, version, header_len, header_crc = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise ValueError(
                f"{path} is not a samgpu SAM index (magic {magic!r}, expected {MAGIC!r}); "
                f"{_fix(path)}"
            )
        if version not in READABLE_VERSIONS:
            readable = ", ".join(map(str, READABLE_VERSIONS))
            raise ValueError(
                f"SAM index {path} has format version {version}, this samgpu reads versions "
                f"{readable}; {_fix(path)}"
            )
        header = f.read(header_len)
    if len(header) < header_len:
        raise ValueError(f"SAM index {path} is truncated inside its header; {_fix(path)}")
    if zlib.crc32(header) != header_crc:
        raise ValueError(f"SAM index {path} has a corrupt header (CRC mismatch); {_fix(path)}")
    try:
        meta = json.loads(header)
        names = [e["name"] for e in meta["arrays"]]
        file_size = int(meta["file_size"])
        int(meta["vocab_size"]), int(meta["eos_id"]), str(meta["tokenizer_fingerprint"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"SAM index {path} has an unreadable header ({exc}); {_fix(path)}"
        ) from exc
    if names != list(ARRAY_NAMES):
        raise ValueError(
            f"SAM index {path} holds arrays {names}, expected {list(ARRAY_NAMES)}; {_fix(path)}"
        )
    if size < file_size:
        raise ValueError(
            f"SAM index {path} is truncated: {size} bytes, header says {file_size}; {_fix(path)}"
        )
    if size > file_size:
        raise ValueError(
            f"SAM index {path} has {size - file_size} trailing bytes after its arrays; {_fix(path)}"
        )
    for e in meta["arrays"]:
        e.setdefault("dtype", "int32")  # version 1
        if e["dtype"] not in _DTYPES or (e["dtype"] != "int32" and e["name"] not in TOKEN_ARRAYS):
            raise ValueError(
                f"SAM index {path}: array {e['name']} has dtype {e['dtype']!r}; {_fix(path)}"
            )
        itemsize = np.dtype(_DTYPES[e["dtype"]]).itemsize
        if e["offset"] % ALIGN or e["offset"] + itemsize * e["count"] > file_size:
            raise ValueError(
                f"SAM index {path}: array {e['name']} lies outside the file; {_fix(path)}"
            )
    return meta


def load_index(path: str | os.PathLike, *, mmap: bool = True, verify: bool = True) -> SamIndex:
    """Load a SamIndex; arrays are torch views of a copy-on-write memory map when mmap=True."""
    path = Path(path)
    meta = read_header(path)
    if mmap:
        # mode "c": private copy-on-write mapping, so the tensors are writable without a copy
        # (torch warns on read-only numpy arrays) and nothing is ever written back to the file.
        raw = np.memmap(path, dtype=np.uint8, mode="c")
    else:
        raw = np.fromfile(path, dtype=np.uint8)
    arrays = {}
    for e in meta["arrays"]:
        dtype = np.dtype(_DTYPES[e["dtype"]])
        arr = raw[e["offset"] : e["offset"] + dtype.itemsize * e["count"]].view(dtype)
        if verify and _crc(arr) != e["crc32"]:
            raise ValueError(
                f"SAM index {path} is corrupt: checksum mismatch in array {e['name']}; {_fix(path)}"
            )
        arrays[e["name"]] = torch.from_numpy(arr if dtype == np.int32 else arr.astype(np.int32))
    index = SamIndex(
        **arrays,
        vocab_size=int(meta["vocab_size"]),
        eos_id=int(meta["eos_id"]),
        tokenizer_fingerprint=str(meta["tokenizer_fingerprint"]),
        extra=dict(meta.get("extra") or {}),
    )
    try:
        _check_shapes(index)
    except ValueError as exc:
        raise ValueError(f"SAM index {path} is inconsistent ({exc}); {_fix(path)}") from exc
    return index


def _check_shapes(index: SamIndex) -> None:
    num_states = index.num_states
    if num_states < 1:
        raise ValueError("no root state")
    for name in ("link", "endpos", "count"):
        if getattr(index, name).shape[0] != num_states:
            raise ValueError(
                f"{name} has {getattr(index, name).shape[0]} entries, not {num_states}"
            )
    if index.edge_offsets.shape[0] != num_states + 1:
        raise ValueError("edge_offsets must have num_states + 1 entries")
    if index.edge_dst.shape != index.edge_token.shape:
        raise ValueError("edge_dst and edge_token disagree on num_edges")
    if index.root_next.shape[0] != index.vocab_size:
        raise ValueError("root_next must have vocab_size entries")
