"""The store file: the cross-request store's documents (oldest first), versioned, checksummed,
tokenizer-fingerprinted, written atomically, validated on load (after samgpu/sam/storage.py).

Layout (little-endian):
  offset 0   8 B   magic b"SAMGPUST"
         8   u32   format version (FORMAT_VERSION)
        12   u32   header length H (bytes of JSON)
        16   u32   crc32 of the JSON header
        20   H B   JSON header: vocab_size, tokenizer_fingerprint, num_docs, num_tokens, file_size,
                   extra (JSON provenance), and per array {name, offset, count, crc32, dtype}:
                   "doc_offsets" int64 [num_docs + 1] (leading 0, non-decreasing, ends at
                   num_tokens) and "tokens" [num_tokens] (uint16 when vocab_size <= 65,536, else
                   int32)
  then both arrays at 64-byte aligned offsets; the file ends at file_size.

The file holds the documents, not the automaton: a load appends them to an empty store (the same
automaton, since construction is deterministic; ~0.8 us per token on an H200), so a file costs 2-4
bytes per token instead of ~92 and nothing in it can make a kernel read out of bounds once ids
and offsets are checked. `surviving_start` applies the store's eviction rule on the host, so a file
holds only what a store of its budget keeps (and a load into a smaller store keeps what that one
would).

Checks on load, each a ValueError naming the file and the fix: missing file, wrong magic, other
format version, truncated file or header, header CRC mismatch, a header that is not the schema
(missing keys, wrong types, arrays overlapping or outside the file), trailing bytes, payload CRC
mismatch, offsets not starting at 0 / decreasing / not ending at num_tokens, token ids outside
[0, vocab_size), a vocabulary larger than the model's (a tokenizer's vocabulary may be smaller
than the model's padded embedding), and a tokenizer fingerprint other than the model's (compared
when both the file and the caller know one).

Writing: a temporary `.<name>.tmp-<host>-<pid>-<random>` in the same folder (exclusive create),
fsynced, renamed over `<name>`; dead writers' leftovers are removed by the next save.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samgpu import files

MAGIC: bytes = b"SAMGPUST"
FORMAT_VERSION: int = 1
ALIGN: int = files.ALIGN
U16_VOCAB: int = 1 << 16
MAX_HEADER_BYTES: int = 1 << 20
ARRAYS: tuple[str, ...] = ("doc_offsets", "tokens")
_DTYPES = {"int64": np.int64, "int32": np.int32, "uint16": np.uint16}
_ALLOWED = {"doc_offsets": ("int64",), "tokens": ("int32", "uint16")}


@dataclass
class StoreFile:
    """A store file's contents: documents as one token array cut by offsets."""

    tokens: np.ndarray  # [T] int32
    doc_offsets: np.ndarray  # [D + 1] int64, leading 0
    vocab_size: int
    tokenizer_fingerprint: str
    extra: dict

    @property
    def num_docs(self) -> int:
        return self.doc_offsets.shape[0] - 1

    def documents(self) -> list[np.ndarray]:
        o = self.doc_offsets
        return [self.tokens[o[i] : o[i + 1]] for i in range(self.num_docs)]


def fix_hint(path: Path) -> str:
    return (
        f"rebuild it with `samgpu store build --input RESPONSES.jsonl --out {path}`, or delete it"
        f" (a run with --store {path} then starts an empty store and saves it there)"
    )


def surviving_start(lengths, capacity: int) -> int:
    """Index of the oldest document a two-generation store of `capacity` tokens per generation
    still holds after appending documents of these lengths in order (the rule of
    kernels/sam_store.py: a document takes min(n, C - 1) + 1 tokens; one that does not fit starts a
    new generation, which evicts the one before the previous)."""
    starts = [0]
    used = 0
    for i, n in enumerate(lengths):
        n = min(int(n), capacity - 1)
        if n <= 0:
            continue
        if used + n + 1 > capacity:
            starts.append(i)
            used = 0
        used += n + 1
    return starts[-2] if len(starts) >= 2 else 0


def save_store_file(
    path: str | os.PathLike,
    documents,
    *,
    vocab_size: int,
    tokenizer_fingerprint: str = "",
    extra: dict | None = None,
) -> Path:
    """Write `documents` (token id sequences, oldest first; empty ones are dropped) to `path`
    atomically. Ids must lie in [0, vocab_size)."""
    path = Path(path)
    docs = [np.asarray(d, dtype=np.int64).reshape(-1) for d in documents]
    docs = [d for d in docs if d.size]
    lengths = np.array([d.size for d in docs], dtype=np.int64)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"store documents hold ids outside [0, {vocab_size})")
    tok_dtype = np.uint16 if vocab_size <= U16_VOCAB else np.int32
    arrays = {"doc_offsets": offsets, "tokens": tokens.astype(tok_dtype)}
    entries = [
        {"name": n, "offset": 0, "count": a.size, "crc32": files.crc32(a), "dtype": a.dtype.name}
        for n, a in arrays.items()
    ]
    meta = {
        "vocab_size": int(vocab_size),
        "tokenizer_fingerprint": str(tokenizer_fingerprint),
        "num_docs": len(docs),
        "num_tokens": int(tokens.size),
        "file_size": 0,
        "extra": extra or {},
        "arrays": entries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(?P<tag>[0-9a-f]{{8}}-\d+)-\w+")
    files.remove_stale(path.parent, pattern)
    files.write_prefixed(path, MAGIC, FORMAT_VERSION, meta, arrays)
    return path


def read_store_header(path: str | os.PathLike) -> dict:
    """The checked JSON header (reads the first bytes only); ValueError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"store file {path} is a folder; give the store file's path")
    if not path.is_file():
        raise ValueError(
            f"store file {path} does not exist (`samgpu store build --input RESPONSES.jsonl "
            f"--out {path}` builds one; a run with --store {path} starts it empty)"
        )
    _, header, size = files.read_prefixed_header(
        path,
        what="store file",
        magic=MAGIC,
        versions=(FORMAT_VERSION,),
        max_header=MAX_HEADER_BYTES,
        hint=fix_hint(path),
        make_hint="`samgpu store build --input RESPONSES.jsonl --out PATH` builds one",
    )
    try:
        meta = json.loads(header)
        _check_header(meta, files.PREFIX.size + len(header))
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"store file {path} has a malformed header ({exc}); {fix_hint(path)}"
        ) from None
    if size != meta["file_size"]:
        what = "truncated" if size < meta["file_size"] else "followed by trailing bytes"
        raise ValueError(
            f"store file {path} is {what}: {size} bytes, header says {meta['file_size']}; "
            f"{fix_hint(path)}"
        )
    return meta


def _int(meta: dict, key: str, lo: int, hi: int) -> int:
    v = meta[key]
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{key} must be an integer in [{lo}, {hi}], got {str(v)[:40]}")
    return v


def _check_header(meta, header_end: int) -> None:
    if not isinstance(meta, dict):
        raise ValueError("the header must be a JSON object")
    _int(meta, "vocab_size", 1, 2**31 - 1)
    num_docs = _int(meta, "num_docs", 0, 2**40)
    num_tokens = _int(meta, "num_tokens", 0, 2**40)
    file_size = _int(meta, "file_size", header_end, 2**63 - 1)
    if not isinstance(meta["tokenizer_fingerprint"], str):
        raise ValueError("tokenizer_fingerprint must be a string")
    if not isinstance(meta["extra"], dict):
        raise ValueError("extra must be an object")
    entries = meta["arrays"]
    if not isinstance(entries, list) or [e.get("name") for e in entries] != list(ARRAYS):
        raise ValueError(f"arrays must be entries {list(ARRAYS)} in that order")
    end = header_end
    for e, count in zip(entries, (num_docs + 1, num_tokens), strict=True):
        name = e["name"]
        if e.get("dtype") not in _ALLOWED[name]:
            raise ValueError(f"array {name}: dtype {str(e.get('dtype'))[:20]} is not allowed")
        if _int(e, "count", 0, 2**40) != count:
            raise ValueError(f"array {name}: count {e['count']} disagrees with the header")
        offset = _int(e, "offset", end, file_size)
        _int(e, "crc32", 0, 2**32 - 1)
        if offset % ALIGN:
            raise ValueError(f"array {name}: offset {offset} is not a multiple of {ALIGN}")
        end = offset + np.dtype(_DTYPES[e["dtype"]]).itemsize * count
        if end > file_size:
            raise ValueError(f"array {name} lies outside the file (ends at {end} > {file_size})")


def read_store_file(
    path: str | os.PathLike,
    *,
    vocab_size: int | None = None,
    tokenizer_fingerprint: str = "",
    verify: bool = True,
) -> StoreFile:
    """Read and validate a store file (module docstring); `vocab_size` / `tokenizer_fingerprint`:
    the model's, checked against the file's (the file's vocabulary may be smaller: a tokenizer's
    ids within a padded embedding). verify=False skips the payload checksums."""
    path = Path(path)
    meta = read_store_header(path)
    if vocab_size is not None and meta["vocab_size"] > vocab_size:
        raise ValueError(
            f"store file {path} was built for a vocabulary of {meta['vocab_size']} ids, the model "
            f"has {vocab_size}: it belongs to another tokenizer; {fix_hint(path)}"
        )
    theirs = meta["tokenizer_fingerprint"]
    if tokenizer_fingerprint and theirs and theirs != tokenizer_fingerprint:
        raise ValueError(
            f"store file {path} was built with another tokenizer (fingerprint {theirs[:12]}, the "
            f"model's is {tokenizer_fingerprint[:12]}); {fix_hint(path)}"
        )
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size != meta["file_size"]:
        raise ValueError(f"store file {path} changed while it was being read; read it again")
    arrays = {}
    for e in meta["arrays"]:
        dtype = np.dtype(_DTYPES[e["dtype"]])
        arr = raw[e["offset"] : e["offset"] + dtype.itemsize * e["count"]].view(dtype)
        if verify and files.crc32(np.ascontiguousarray(arr)) != e["crc32"]:
            raise ValueError(
                f"store file {path} is corrupt: checksum mismatch in {e['name']}; {fix_hint(path)}"
            )
        arrays[e["name"]] = arr
    offsets = arrays["doc_offsets"].astype(np.int64)
    tokens = arrays["tokens"].astype(np.int32)
    if offsets[0] != 0 or offsets[-1] != tokens.size or np.any(np.diff(offsets) < 0):
        raise ValueError(
            f"store file {path} has document offsets that do not cut its {tokens.size} tokens "
            f"(leading 0, non-decreasing, ending at the token count); {fix_hint(path)}"
        )
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= meta["vocab_size"]):
        raise ValueError(
            f"store file {path} holds token ids outside [0, {meta['vocab_size']}); {fix_hint(path)}"
        )
    return StoreFile(
        tokens=tokens,
        doc_offsets=offsets,
        vocab_size=meta["vocab_size"],
        tokenizer_fingerprint=theirs,
        extra=meta["extra"],
    )


__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "StoreFile",
    "read_store_file",
    "read_store_header",
    "save_store_file",
    "surviving_start",
]
