"""Shared helpers of the automaton kernel tests: small texts (random over tiny alphabets, which
force repeats and clones, and real text from the shipped corpus) and host-side oracles."""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources

import torch

from samgpu.sam import SamIndex


def i32(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int32)


def random_text(gen: torch.Generator, length: int, alphabet: int) -> list[int]:
    return torch.randint(0, alphabet, (length,), generator=gen).tolist()


@functools.cache
def _corpus_lines(num: int) -> tuple[str, ...]:
    path = resources.files("samgpu") / "data" / "corpus" / "gsm8k_train.jsonl.gz"
    out = []
    with gzip.open(str(path), "rt") as f:
        for line in f:
            rec = json.loads(line)
            out.append(rec["question"] + "\n" + rec["answer"])
            if len(out) == num:
                break
    return tuple(out)


@functools.cache
def _encoder():
    """The default tokenizer when it loads offline; else a byte-level stand-in."""
    try:
        from samgpu.models import load_default_tokenizer

        tok = load_default_tokenizer()
        return lambda s: list(tok(s, add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - any failure: fall back to bytes
        return lambda s: list(s.encode())


def real_texts(num: int, max_tokens: int) -> list[list[int]]:
    """`num` tokenized GSM8K question+answer texts (shipped corpus), cut to max_tokens, with ids
    renumbered densely by first appearance (so small-vocabulary host indices stay cheap)."""
    encode = _encoder()
    raw = [encode(s)[:max_tokens] for s in _corpus_lines(num)]
    rank: dict[int, int] = {}
    return [[rank.setdefault(t, len(rank)) for t in doc] for doc in raw]


def host_longest_match(query: list[int], corpus: list[int], vocab_size: int) -> tuple[int, int]:
    """(length, earliest endpos) of the longest suffix of `query` occurring in `corpus`, by a host
    SamIndex. The index appends vocabulary singletons after the corpus: a match ending there is no
    match in the corpus. Needs the index EOS (vocab_size - 1) absent from both."""
    if not corpus or not query:
        return 0, -1
    index = SamIndex.build([corpus], vocab_size=vocab_size, eos_id=vocab_size - 1)
    length, endpos = index.longest_match(query)
    if endpos >= len(corpus):
        return 0, -1
    return length, endpos


def host_longest_earlier_match(text: list[int], vocab_size: int) -> tuple[int, int]:
    """What match-then-extend yields: the longest suffix of `text` that also ends at an EARLIER
    position, i.e. the longest match of `text` in text[:-1]."""
    return host_longest_match(text, text[:-1], vocab_size)


def pad_rows(rows: list[list[int]], width: int | None = None, pad: int = -1):
    """Ragged lists -> ([B, width] int32 padded with `pad`, lengths [B] int32)."""
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = torch.full((len(rows), width), pad, dtype=torch.int32)
    for b, r in enumerate(rows):
        out[b, : len(r)] = i32(r) if r else out[b, :0]
    return out, i32([len(r) for r in rows])
