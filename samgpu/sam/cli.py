"""`samgpu index ...` subcommands: build a static index, print an index's stats.

  samgpu index build [--corpus FILE ...] [--fields a,b] [--tokenizer default|PATH] [--out PATH]
  samgpu index stats PATH

`build` prints ONE JSON line: the index stats plus the build rate and the output path. `stats`
also runs the deep structural validation (`"structure": "ok"`; an error line otherwise). Without
--corpus it builds the embedded default index (shipped corpus, samgpu.sam.default) and, without
--out, writes it to the default cache location `$SAMGPU_CACHE/default-<fingerprint[:12]>.samidx`.

Layering: samgpu.sam knows nothing of models, so the tokenizer is loaded by a callback the caller
passes (`run_index(args, load_tokenizer=...)`; samgpu/cli/__init__.py passes one that maps
"default" to samgpu.models.load_default_tokenizer() and a folder to
AutoTokenizer.from_pretrained(path)).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from samgpu.files import same_file, starts_with, unwritable_reason
from samgpu.sam.corpus import DEFAULT_FIELDS, tokenizer_fingerprint
from samgpu.sam.default import build_index_from_files, default_index_path, ensure_default_index
from samgpu.sam.index import SamIndex
from samgpu.sam.storage import MAGIC as INDEX_MAGIC
from samgpu.sam.storage import read_header

TokenizerLoader = Callable[[str], object]


def add_index_parser(subparsers) -> argparse.ArgumentParser:
    """Add `index {build,stats}` to an argparse subparsers object; returns the `index` parser."""
    index = subparsers.add_parser("index", help="build or inspect a static SAM index")
    sub = index.add_subparsers(dest="index_command", required=True, metavar="{build,stats}")
    build = sub.add_parser("build", help="build a static index from corpus files")
    build.add_argument(
        "--corpus",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="JSON / JSONL / text files (.gz ok); default: the embedded corpus",
    )
    build.add_argument(
        "--fields",
        default=",".join(DEFAULT_FIELDS),
        help="record fields joined into each document's text (default: %(default)s)",
    )
    build.add_argument(
        "--tokenizer",
        default="default",
        help="'default' (the embedded model's) or a local tokenizer folder",
    )
    build.add_argument(
        "--out",
        default=None,
        help="output file; default for the embedded corpus: $SAMGPU_CACHE/default-<fp>.samidx",
    )
    build.add_argument(
        "--force", action="store_true", help="rebuild the default index even if it is cached"
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    stats = sub.add_parser(
        "stats",
        help="print an index file's sizes as one JSON line",
        description="Load a static index file, check its checksums and run the deep structural"
        " validation, then print one JSON line: states, edges, corpus tokens, vocabulary size,"
        " tokenizer fingerprint, file bytes, and 'structure': 'ok' (or one error line, exit 2).",
    )
    stats.add_argument(
        "path",
        metavar="PATH",
        help="a .samidx file, as `samgpu index build --out PATH` writes it (the default index"
        " lives in $SAMGPU_CACHE, default ~/.cache/samgpu)",
    )
    return index


def run_index(args: argparse.Namespace, *, load_tokenizer: TokenizerLoader | None = None) -> int:
    """Run `index build|stats`; returns the exit status (2 with one error line on bad input)."""
    try:
        if args.index_command == "stats":
            return _stats(Path(args.path))
        if load_tokenizer is None:
            raise ValueError(
                "index build needs a tokenizer loader (run it as `samgpu index build`)"
            )
        return _build(args, load_tokenizer)
    except (ValueError, OSError) as exc:  # bad input, unreadable or unwritable paths
        print(f"samgpu: error: {exc}", file=sys.stderr, flush=True)
        return 2


def _build(args: argparse.Namespace, load_tokenizer: TokenizerLoader) -> int:
    fields = tuple(f.strip() for f in args.fields.split(",") if f.strip())
    if not fields:
        raise ValueError(f"--fields {args.fields!r} names no field")
    out = None if args.out is None else Path(args.out)
    if out is not None and out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the index file's path")
    for name in args.corpus:  # before the (slow) tokenizer load
        if Path(name).is_dir():
            raise ValueError(f"corpus {name} is a folder; give its files")
        if not Path(name).is_file():
            raise ValueError(f"corpus file {name} does not exist")
        if out is not None and same_file(Path(name), out):
            raise ValueError(f"--out {args.out} is the corpus file {name}; give the index its own")
    if out is not None and out.is_file() and not starts_with(out, INDEX_MAGIC):
        raise ValueError(
            f"--out {args.out} exists and is not a samgpu index; samgpu does not write over other"
            " files: give another --out (or delete it)"
        )
    reason = None if out is None else unwritable_reason(out)
    if reason is not None:
        raise ValueError(f"--out {args.out}: {reason}")
    tokenizer = load_tokenizer(args.tokenizer)
    progress = not args.no_progress
    start = time.perf_counter()
    if not args.corpus:
        if tuple(fields) != DEFAULT_FIELDS:
            raise ValueError("--fields applies to --corpus files; the default corpus has its own")
        path, index = ensure_default_index(tokenizer, args.out, progress, force=args.force)
        if index is None:  # an up-to-date default index was already cached
            try:
                index = SamIndex.load(path)
                index.build_info["cached"] = True
            except ValueError as exc:  # damaged cache: rebuild, as the generate path does
                print(f"samgpu: rebuilding {path}: {exc}", file=sys.stderr, flush=True)
                path, index = ensure_default_index(tokenizer, args.out, progress, force=True)
    else:
        if args.out is None:
            raise ValueError(
                "--out is required with --corpus (the default cache location "
                f"{default_index_path(tokenizer_fingerprint(tokenizer)).parent} holds the "
                "embedded default index only)"
            )
        index = build_index_from_files(
            [Path(p) for p in args.corpus], tokenizer, fields=fields, progress=progress
        )
        if index.extra.get("records_without_fields"):
            print(
                f"samgpu: warning: {index.extra['records_without_fields']} record(s) have none of"
                f" the fields {', '.join(fields)} and were left out; --fields names others",
                file=sys.stderr,
                flush=True,
            )
        path = index.save(args.out)
    seconds = time.perf_counter() - start
    line = {"path": str(path), **index.stats(), **index.extra, **index.build_info}
    line["wall_seconds"] = round(seconds, 3)
    print(json.dumps(line))
    return 0


def _stats(path: Path) -> int:
    meta = read_header(path)
    index = SamIndex.load(path)
    try:
        index.validate(deep=True)  # load ran the fast level; an inspection can afford the rest
    except ValueError as exc:
        raise ValueError(f"SAM index {path} fails the deep validation: {exc}") from None
    extra = meta.get("extra") or {}
    line = {"path": str(path), **index.stats(), **extra, "checksums": "ok", "structure": "ok"}
    line["file_bytes"] = path.stat().st_size
    print(json.dumps(line))
    return 0
