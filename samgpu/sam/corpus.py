"""Corpus reading for the static index: files -> texts -> token documents; tokenizer fingerprints.

Formats, chosen by suffix (a trailing `.gz` is decompressed transparently):
- `.jsonl`: one JSON record per line (blank lines skipped);
- `.json`: a JSON array of records (or a single record);
- anything else (`.txt`, `.md`, ...): plain text, the whole file is one document.
A record is a JSON object (its text fields, in `fields` order, joined by a newline, empty ones
skipped) or a JSON string (taken whole). Default fields: instruction, input, question, output,
response, answer: prompt-like fields first so a record reads as prompt then answer.

Example: {"question": "2+2?", "answer": "4"} -> "2+2?\n4".

Tokenization is a callback (`encode_batch: list[str] -> list[list[int]]`), so this module needs no
tokenizer library; the CLI passes the tokenizer's batch call with add_special_tokens=False
(no BOS inside the corpus; each document is followed by EOS in the index text).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

DEFAULT_FIELDS: tuple[str, ...] = (
    "instruction",
    "input",
    "question",
    "output",
    "response",
    "answer",
)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _kind(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    last = suffixes[-1] if suffixes else ""
    return {".jsonl": "jsonl", ".json": "json"}.get(last, "text")


def record_text(record, fields: Sequence[str]) -> str:
    """Text of one record: a string as is; an object's `fields` joined by newlines."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a JSON object or string, got {type(record).__name__}")
    parts = []
    for name in fields:
        value = record.get(name)
        if value is None or value == "":
            continue
        parts.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return "\n".join(parts)


def read_texts(
    paths: Iterable[str | os.PathLike],
    fields: Sequence[str] = DEFAULT_FIELDS,
    skipped: list[int] | None = None,
) -> Iterator[str]:
    """Yield one text per record (JSON/JSONL) or per file (plain text); empty texts are skipped
    (counted in `skipped[0]` when given: JSON records with none of `fields`). Missing files and
    malformed JSON (too deeply nested included) raise ValueError naming the file (and line, for
    JSONL)."""
    fields = tuple(fields)
    if not fields:
        raise ValueError("fields must name at least one record field")
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise ValueError(f"corpus file {path} does not exist")
        kind = _kind(path)
        try:
            with _open_text(path) as f:
                if kind == "jsonl":
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise ValueError(
                                f"corpus file {path}, line {lineno}: malformed JSON ({exc.msg})"
                            ) from exc
                        except RecursionError:
                            raise ValueError(
                                f"corpus file {path}, line {lineno}: JSON nested too deeply"
                            ) from None
                        text = _text_or_error(record, fields, f"{path}, line {lineno}")
                        if text:
                            yield text
                        elif skipped is not None:
                            skipped[0] += 1
                elif kind == "json":
                    try:
                        data = json.load(f)
                    except json.JSONDecodeError as exc:
                        raise ValueError(
                            f"corpus file {path}: malformed JSON at line {exc.lineno} ({exc.msg})"
                        ) from exc
                    except RecursionError:
                        raise ValueError(f"corpus file {path}: JSON nested too deeply") from None
                    records = data if isinstance(data, list) else [data]
                    for i, record in enumerate(records):
                        text = _text_or_error(record, fields, f"{path}, record {i}")
                        if text:
                            yield text
                        elif skipped is not None:
                            skipped[0] += 1
                else:
                    text = f.read()
                    if text:
                        yield text
        except UnicodeDecodeError as exc:
            raise ValueError(f"corpus file {path} is not UTF-8 text ({exc})") from exc
        except (OSError, EOFError) as exc:  # gzip errors are OSError/EOFError
            raise ValueError(f"corpus file {path} cannot be read ({exc})") from exc


def _text_or_error(record, fields: Sequence[str], where: str) -> str:
    try:
        return record_text(record, fields)
    except TypeError as exc:
        raise ValueError(f"corpus file {where}: {exc}") from exc
    except RecursionError:  # json.dumps of a deeply nested field value
        raise ValueError(f"corpus file {where}: a field is nested too deeply") from None


def token_docs(
    texts: Iterable[str],
    encode_batch: Callable[[list[str]], Sequence[Sequence[int]]],
    *,
    batch_size: int = 256,
) -> Iterator[np.ndarray]:
    """Tokenize texts in batches (fast tokenizers parallelise a batch) -> int32 arrays."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            yield from (np.asarray(ids, dtype=np.int32) for ids in encode_batch(batch))
            batch = []
    if batch:
        yield from (np.asarray(ids, dtype=np.int32) for ids in encode_batch(batch))


def hf_encode_batch(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """Batch encoder for a Hugging Face-style tokenizer (duck-typed: callable returning input_ids,
    else `encode` per text); no special tokens added."""

    def encode_batch(texts: list[str]) -> list[list[int]]:
        if callable(tokenizer):
            return tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts]

    return encode_batch


def tokenizer_vocab_size(tokenizer) -> int:
    """Number of ids the tokenizer can produce: len(tokenizer) when defined, else max id + 1."""
    try:
        return len(tokenizer)
    except TypeError:
        return max(tokenizer.get_vocab().values()) + 1


def tokenizer_fingerprint(tokenizer) -> str:
    """Stable SHA-256 hex digest of the tokenizer's vocabulary (get_vocab() items sorted by id then
    string) and its special tokens (`all_special_tokens`, sorted, when the object has them). Any
    object with get_vocab() works. Equal fingerprints: same token strings at the same ids."""
    vocab = tokenizer.get_vocab()
    items = sorted((int(i), str(s)) for s, i in vocab.items())
    specials = sorted(str(s) for s in (getattr(tokenizer, "all_special_tokens", None) or []))
    payload = json.dumps(
        {"vocab": items, "special": specials}, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
