"""`samgpu store ...`: build a cross-request store file from response files, print a file's stats.

  samgpu store build --input out.jsonl [more.jsonl ...] --out run.samstore [--with-prompts]
  samgpu store stats run.samstore

`build` reads `samgpu generate --output` files (or any JSONL whose records hold the response text
in --field, default "completion"), tokenizes each response (no special tokens; the EOS id appended
when the record's finish_reason is "eos", as a live run stores it), optionally preceded by its
prompt encoded as `samgpu generate` encodes it (chat template unless --raw; the prompt field found
as by `generate`: prompt, text, then messages, or --prompt-field), keeps what a store of
--store-tokens keeps (the store's two-generation eviction rule, newest last), and writes the file
atomically with the tokenizer's fingerprint. --append adds to an existing file's documents.
Records with no response (skipped prompts) are left out. One JSON line: path, documents, tokens,
dropped (evicted by the budget), file bytes.

`stats` reads and validates the whole file (checksums, offsets, ids) and prints one JSON line:
documents, tokens, mean document length, vocabulary, fingerprint, provenance, and the GPU bytes a
store of the default budget takes (~92 per token of budget).

Use the file with `samgpu generate --store PATH` (loaded at start, saved at the end) with the
methods that draft from automata: `sam`, `sam+tr`, `sam-tree`, `merged`, `sam+eagle`,
`merged+eagle`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from samgpu.drafters.parts.store import DEFAULT_STORE_TOKENS, NUM_GENERATIONS, max_capacity
from samgpu.drafters.parts.store_file import MAGIC as STORE_MAGIC
from samgpu.drafters.parts.store_file import (
    read_store_file,
    read_store_header,
    save_store_file,
    surviving_start,
)
from samgpu.errors import UserError
from samgpu.files import same_file, starts_with, unwritable_reason

BYTES_PER_TOKEN: float = 92.0  # device bytes per token of budget (samgpu.automata.StoreAutomaton)


def add_store_parser(subparsers) -> argparse.ArgumentParser:
    """Add `store {build,stats}` to an argparse subparsers object; returns the `store` parser."""
    store = subparsers.add_parser(
        "store", help="build or inspect a cross-request store file (generate --store PATH)"
    )
    sub = store.add_subparsers(dest="store_command", required=True, metavar="{build,stats}")
    build = sub.add_parser("build", help="build a store file from response JSONL files")
    build.add_argument(
        "--input", nargs="+", action="extend", required=True, metavar="JSONL", help="responses"
    )
    build.add_argument("--out", required=True, help="the store file to write")
    build.add_argument(
        "--field", default="completion", help="record field of the response (default: %(default)s)"
    )
    build.add_argument(
        "--with-prompts", action="store_true", help="documents are prompt + response"
    )
    build.add_argument(
        "--prompt-field", default=None, help="with --with-prompts: the prompt field (text/messages)"
    )
    build.add_argument("--raw", action="store_true", help="prompts without the chat template")
    build.add_argument(
        "--tokenizer", default="default", help="'default' (the embedded model's) or a folder"
    )
    build.add_argument(
        "--store-tokens",
        type=int,
        default=DEFAULT_STORE_TOKENS,
        help="budget of the store the file is for: older documents past it are dropped "
        "(default: %(default)s)",
    )
    build.add_argument("--append", action="store_true", help="add to an existing --out file")
    stats = sub.add_parser("stats", help="validate a store file and print its sizes as JSON")
    stats.add_argument("path", help="the store file")
    return store


def run_store(args: argparse.Namespace) -> int:
    """Run `store build|stats`; returns the exit status (2 with one error line on bad input)."""
    try:
        if args.store_command == "stats":
            return _stats(Path(args.path))
        return _build(args)
    except (ValueError, OSError, UserError) as exc:
        print(f"samgpu: error: {exc}", file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", 2)


def _check_input(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"input {path} is a folder; give a JSONL file of responses")
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist")


def _check_writable(out: Path) -> None:
    """The folder the store goes to exists (saving does not create it) and is writable (checked
    before any work)."""
    folder = out.expanduser().absolute().parent
    if not folder.is_dir():
        raise ValueError(f"--out {out}: folder {folder} does not exist")
    reason = unwritable_reason(out)
    if reason is not None:
        raise UserError(f"--out {out}: {reason}", exit_code=1)


def _records(path: Path):
    """(line number, record) of a JSONL file; a malformed line is an error naming it."""
    from samgpu.inputs import iter_jsonl

    _check_input(path)
    for line_no, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object")
        yield line_no, rec


def _prompt_ids(rec: dict, path: Path, line_no: int, args, tokenizer) -> list[int]:
    from samgpu.api import encode_chat
    from samgpu.io import parse_record

    parsed = parse_record(rec, index=0, line=line_no, path=path, field=args.prompt_field)
    if parsed.messages is not None:
        return encode_chat(tokenizer, parsed.messages)
    if args.raw:
        return list(tokenizer(parsed.prompt).input_ids)
    return encode_chat(tokenizer, [{"role": "user", "content": parsed.prompt}])


def response_documents(paths: list[Path], args, tokenizer) -> tuple[list[list[int]], int]:
    """(documents, records skipped) from response files, in file and line order."""
    eos = getattr(tokenizer, "eos_token_id", None)
    docs, skipped = [], 0
    for path in paths:
        for line_no, rec in _records(path):
            where = f"{path}:{line_no}"
            text = rec.get(args.field)
            if text is None or rec.get("finish_reason") == "skipped":
                skipped += 1
                continue
            if not isinstance(text, str):
                raise ValueError(f"{where}: field {args.field!r} must be a string")
            ids = list(tokenizer(text, add_special_tokens=False).input_ids)
            if rec.get("finish_reason") == "eos" and eos is not None:
                ids.append(int(eos))
            if not ids:  # an empty response (no EOS either): nothing to store, counted as skipped
                skipped += 1
                continue
            if args.with_prompts:
                ids = _prompt_ids(rec, path, line_no, args, tokenizer) + ids
            docs.append(ids)
    return docs, skipped


def _build(args: argparse.Namespace) -> int:
    from samgpu.sam import tokenizer_fingerprint, tokenizer_vocab_size

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the store file's path")
    if args.store_tokens < 4:
        raise ValueError(f"--store-tokens {args.store_tokens} must be >= 4")
    paths = [Path(p) for p in args.input]
    for p in paths:  # before the (slow) tokenizer load
        _check_input(p)
        if same_file(p, out):
            raise ValueError(f"--out {out} is the input file {p}; give the store its own file")
    if out.is_file() and not starts_with(out, STORE_MAGIC):
        raise ValueError(
            f"--out {out} exists and is not a samgpu store; samgpu does not write over other"
            " files: give another --out (or delete it)"
        )
    _check_writable(out)
    if args.prompt_field is not None and not args.with_prompts:
        raise ValueError("--prompt-field goes with --with-prompts (it names the prompts to store)")
    from samgpu.cli import load_tokenizer  # the loader `samgpu index build` uses

    tokenizer = load_tokenizer(args.tokenizer)
    vocab, fingerprint = tokenizer_vocab_size(tokenizer), tokenizer_fingerprint(tokenizer)
    largest = NUM_GENERATIONS * max_capacity(vocab)
    if args.store_tokens > largest:  # (a run would refuse to load it)
        raise ValueError(
            f"--store-tokens {args.store_tokens} exceeds the largest store for this tokenizer's"
            f" {vocab} ids ({largest} tokens)"
        )
    docs: list = []
    before: dict = {}  # (--append: the file's build record, extended below)
    if args.append and out.exists():
        old = read_store_file(out, vocab_size=vocab, tokenizer_fingerprint=fingerprint)
        docs, before = list(old.documents()), dict(old.extra or {})
    new_docs, skipped = response_documents(paths, args, tokenizer)
    if not any(new_docs):  # (as `samgpu generate` when no record can run: an error, no file)
        raise ValueError(
            f"no response to store: {skipped} record(s) without a {args.field!r} string (or"
            " skipped), none with text; nothing was written (--field names the response field)"
        )
    docs += new_docs
    keep = surviving_start([len(d) for d in docs], args.store_tokens // 2)
    prompts = bool(args.with_prompts)
    if "store_prompts" in before and before["store_prompts"] != prompts:
        prompts = "mixed"  # (documents with and without their prompts)
    extra = {
        "built_from": [*before.get("built_from", []), *(str(p) for p in paths)],
        "store_prompts": prompts,
        "store_tokens": args.store_tokens,
    }
    save_store_file(
        out, docs[keep:], vocab_size=vocab, tokenizer_fingerprint=fingerprint, extra=extra
    )
    meta = read_store_header(out)
    line = {
        "path": str(out),
        "documents": meta["num_docs"],
        "tokens": meta["num_tokens"],
        "dropped": keep,
        "skipped_records": skipped,
        "file_bytes": out.stat().st_size,
    }
    print(json.dumps(line))
    return 0


def _stats(path: Path) -> int:
    f = read_store_file(path)  # every check: checksums, offsets, ids
    lengths = [int(n) for n in (f.doc_offsets[1:] - f.doc_offsets[:-1])]
    num_tokens = int(f.tokens.size)
    kept = surviving_start(lengths, DEFAULT_STORE_TOKENS // 2)
    line = {
        "path": str(path),
        "documents": f.num_docs,
        "tokens": num_tokens,
        "mean_document_tokens": round(num_tokens / f.num_docs, 1) if f.num_docs else 0.0,
        "vocab_size": f.vocab_size,
        "tokenizer_fingerprint": f.tokenizer_fingerprint[:12],
        **{k: v for k, v in f.extra.items() if k != "built_from"},
        "documents_kept_by_default_budget": f.num_docs - kept,
        "gpu_bytes_default_budget": int(BYTES_PER_TOKEN * DEFAULT_STORE_TOKENS),
        "file_bytes": path.stat().st_size,
        "checksums": "ok",
    }
    print(json.dumps(line))
    return 0


__all__ = ["add_store_parser", "response_documents", "run_store"]
