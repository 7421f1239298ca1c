"""The embedded default index: built from the shipped corpus (samgpu/data/corpus) for a tokenizer,
cached under `$SAMGPU_CACHE` (default `~/.cache/samgpu`) as `default-<fingerprint[:12]>.samidx`.

Example: `path = build_default_index(tokenizer)` builds once (~2.5 M corpus tokens for SmolLM2's
tokenizer, a few seconds) and afterwards returns the cached file, after checking its header names
the same tokenizer fingerprint and default-corpus version.
"""

from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

from samgpu.sam.corpus import (
    DEFAULT_FIELDS,
    hf_encode_batch,
    read_texts,
    token_docs,
    tokenizer_fingerprint,
    tokenizer_vocab_size,
)
from samgpu.sam.index import SamIndex
from samgpu.sam.storage import read_header, remove_stale_temporaries

DEFAULT_CORPUS_FILES: tuple[str, ...] = (
    "gsm8k_train.jsonl.gz",
    "gpteacher_codegen-instruct.json.gz",
    "gpteacher_roleplay-simple-deduped-roleplay-instruct.json.gz",
)
# Bump when the shipped corpus or the text recipe changes: cached default indices are then rebuilt.
DEFAULT_CORPUS_ID: str = "samgpu-default-corpus-v1"


def default_corpus_paths() -> list[Path]:
    """Paths of the shipped corpus files (inside the installed package)."""
    folder = resources.files("samgpu") / "data" / "corpus"
    paths = [Path(str(folder / name)) for name in DEFAULT_CORPUS_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the embedded corpus is missing {missing}; reinstall samgpu (`pip install -e .`)"
        )
    return paths


def cache_dir() -> Path:
    """`$SAMGPU_CACHE`, else `~/.cache/samgpu`."""
    env = os.environ.get("SAMGPU_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "samgpu"


def default_index_path(fingerprint: str) -> Path:
    """Cache location of the default index for the tokenizer with this fingerprint."""
    if not fingerprint:
        raise ValueError("the default index path needs a tokenizer fingerprint")
    return cache_dir() / f"default-{fingerprint[:12]}.samidx"


def build_default_index(
    tokenizer,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    force: bool = False,
    vocab_size: int | None = None,
) -> Path:
    """Build (or reuse) the default index for `tokenizer` (duck-typed: get_vocab(), eos_token_id,
    batch call or encode()). Returns the file path. An existing file is reused when its header names
    this tokenizer and the current default corpus, unless force=True."""
    return ensure_default_index(tokenizer, out, progress, force=force, vocab_size=vocab_size)[0]


def ensure_default_index(
    tokenizer,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    force: bool = False,
    vocab_size: int | None = None,
) -> tuple[Path, SamIndex | None]:
    """build_default_index, also returning the index when it was built now (None if reused)."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    path = Path(out) if out is not None else default_index_path(fingerprint)
    # a killed build leaves a ~50 MB temporary in the cache: removed here, even when the cached
    # index is reused
    remove_stale_temporaries(cache_dir(), r"default-[0-9a-f]+\.samidx")
    if not force and path.is_file() and _is_current_default(path, fingerprint):
        return path, None
    index = build_index_from_files(
        default_corpus_paths(),
        tokenizer,
        fields=DEFAULT_FIELDS,
        progress=progress,
        vocab_size=vocab_size,
        fingerprint=fingerprint,
    )
    index.extra["corpus"] = DEFAULT_CORPUS_ID
    index.save(path)
    return path, index


def load_default_index(
    tokenizer, out: str | os.PathLike | None = None, progress: bool = True
) -> SamIndex:
    """The default index for `tokenizer`, loaded (and validated): built when missing or stale,
    and rebuilt, with a warning, when the cached file exists but does not load (damaged, or
    written by a faulty tool): the cache is samgpu's own, so it heals instead of refusing."""
    path, index = ensure_default_index(tokenizer, out, progress)
    if index is not None:
        return index
    try:
        return SamIndex.load(path)
    except ValueError as exc:
        warnings.warn(f"samgpu: rebuilding the cached default index: {exc}", stacklevel=2)
    return ensure_default_index(tokenizer, out, progress, force=True)[1]


def build_index_from_files(
    paths: list[Path],
    tokenizer,
    *,
    fields=DEFAULT_FIELDS,
    progress: bool = False,
    vocab_size: int | None = None,
    fingerprint: str | None = None,
) -> SamIndex:
    """Read, tokenize (no special tokens) and build; the index records the tokenizer fingerprint."""
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token_id; the index separates documents by EOS")
    skipped = [0]
    docs = token_docs(read_texts(paths, fields, skipped), hf_encode_batch(tokenizer))
    index = SamIndex.build(
        docs,
        vocab_size=vocab_size or tokenizer_vocab_size(tokenizer),
        eos_id=int(eos_id),
        tokenizer_fingerprint=fingerprint or tokenizer_fingerprint(tokenizer),
        progress=progress,
        expected_tokens=sum(_text_bytes(Path(p)) for p in paths) // 4,  # ~4 bytes per token
    )
    index.extra["corpus_files"] = [Path(p).name for p in paths]
    index.extra["fields"] = list(fields)
    index.extra["records_without_fields"] = skipped[0]
    return index


# Largest uncompressed / compressed ratio believed from a .gz size trailer (text rarely exceeds
# 10x; the hint only presizes the build, so an underestimate costs a regrowth, not a failure).
GZIP_MAX_RATIO: int = 32


def _text_bytes(path: Path) -> int:
    """Uncompressed size estimate: the file size, or for .gz the ISIZE trailer (size mod 2**32)
    capped at GZIP_MAX_RATIO x the compressed size, since the trailer is not checked until the
    whole stream is read (a 111-byte file may claim 4 GB)."""
    size = path.stat().st_size
    if path.suffix == ".gz" and size >= 4:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return min(int.from_bytes(f.read(4), "little"), GZIP_MAX_RATIO * size)
    return size


def _is_current_default(path: Path, fingerprint: str) -> bool:
    try:
        meta = read_header(path)
    except ValueError:
        return False
    return (
        meta["tokenizer_fingerprint"] == fingerprint
        and (meta.get("extra") or {}).get("corpus") == DEFAULT_CORPUS_ID
    )
