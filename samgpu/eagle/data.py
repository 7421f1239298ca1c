"""Training data for the EAGLE head: sequences (prompt + response + EOS), the held-out split, and
length-bucketed batches under a token budget.

A sequence is the chat-templated prompt exactly as samgpu encodes it (`encode_chat`: the user turn
and the opened assistant turn), then the response's tokens, then the EOS, cut to `max_len`:
  tokens = [p0 .. p(P-1), r0 .. r(R-1), eos]   num_prompt = P
The head sees pairs p = (x[p+1], f[p]) and learns f[p+1] (samgpu/drafters/parts/eagle_model.py).
Loss pairs are those a drafter meets after prefill: from p = P-1 (input token r0, the first
generated one; feature f[P-1] of the last prompt position) to the pair whose target is the state
at EOS's predecessor; the pair whose input token is the final EOS predicts what follows a finished
answer and is left out. Prompt pairs still pass through the head's attention.
  Example: P=3, tokens [a b c r0 r1 eos] -> pairs 0..4; loss pairs 2 (r0 -> f[3] predicts r1) and
  3 (r1 -> f[4] predicts eos); pair 4 (input eos) is not a loss pair: loss_range = (2, 4).

Split: the round(val_share * n) indices (at least one of two or more) with the smallest
sha256(str(index)) are held out: deterministic, and independent of the order of work.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from samgpu.errors import InputError
from samgpu.inputs import iter_jsonl

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data/corpus/smollm2_self_responses.jsonl.gz"
VAL_SHARE = 0.03
MEGABATCH_BATCHES = 64  # training batches drawn from one shuffled, length-sorted slice


@dataclass(frozen=True)
class Example:
    """One training sequence."""

    tokens: list[int]  # [seq_len] prompt ids, response ids, EOS (cut to max_len)
    num_prompt: int  # leading prompt tokens
    has_eos: bool  # ends with the EOS (not cut by max_len)

    def loss_range(self) -> tuple[int, int]:
        """Loss pairs [start, stop) (module doc); empty when the response was cut off entirely."""
        stop = len(self.tokens) - 1 - int(self.has_eos)
        return self.num_prompt - 1, max(self.num_prompt - 1, stop)

    @property
    def num_loss_pairs(self) -> int:
        start, stop = self.loss_range()
        return stop - start


def make_example(
    prompt: Sequence[int], response: Sequence[int], eos_id: int | None, max_len: int
) -> Example | None:
    """prompt + response (+ eos_id) cut to max_len; None when no loss pair is left."""
    if not prompt:
        raise ValueError("an EAGLE training sequence needs a prompt of at least one token")
    tail = [eos_id] if eos_id is not None else []
    tokens = [int(t) for t in (*prompt, *response, *tail)]
    has_eos = eos_id is not None and len(tokens) <= max_len
    example = Example(tokens[:max_len], len(prompt), has_eos)
    return example if example.num_loss_pairs > 0 else None


def read_records(path: str | Path) -> list[dict]:
    """The {"instruction", "response", ...} records of a JSONL file (gzipped if it ends in .gz);
    InputError naming the file and line when one is malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"data file {str(path)!r} not found (expected JSONL records with"
            " 'instruction' and 'response')"
        )
    out = []
    try:
        for line_no, rec in iter_jsonl(path):
            if not (
                isinstance(rec, dict)
                and isinstance(rec.get("instruction"), str)
                and isinstance(rec.get("response"), str)
            ):
                raise InputError(
                    f"{path}:{line_no}: expected an object with string fields 'instruction'"
                    " and 'response'"
                )
            out.append(rec)
    except (OSError, EOFError) as e:  # unreadable, or a damaged gzip stream
        raise InputError(f"{path}: not a readable JSONL file ({e})") from None
    if not out:
        raise InputError(f"{path}: no records")
    return out


def encode_records(
    records: list[dict], tokenizer, eos_id: int, max_len: int
) -> list[Example | None]:
    """One Example (or None: nothing left to learn after the cut) per record, in order."""
    from samgpu.completions import encode_chat

    responses = tokenizer([r["response"] for r in records], add_special_tokens=False).input_ids
    out = []
    for rec, response in zip(records, responses, strict=True):
        prompt = encode_chat(tokenizer, [{"role": "user", "content": rec["instruction"]}])
        out.append(make_example(prompt, response, eos_id, max_len))
    return out


def split_indices(num: int, val_share: float = VAL_SHARE) -> tuple[list[int], list[int]]:
    """(train, val) indices of range(num), each ascending (module doc)."""
    if num < 2:
        return list(range(num)), []
    key = lambda i: hashlib.sha256(str(i).encode()).digest()
    num_val = min(num - 1, max(1, round(val_share * num)))
    val = set(sorted(range(num), key=key)[:num_val])
    return [i for i in range(num) if i not in val], sorted(val)


def sorted_batches(lengths: Sequence[int], tokens_per_batch: int) -> list[list[int]]:
    """Indices in batches of similar length, longest first, each of at most tokens_per_batch
    padded tokens (batch size x its longest sequence; a longer sequence is a batch alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return _carve(order, lengths, tokens_per_batch)


def shuffled_batches(
    lengths: Sequence[int], tokens_per_batch: int, rng: random.Random
) -> list[list[int]]:
    """An epoch's batches: indices shuffled, sorted by length within slices of about
    MEGABATCH_BATCHES batches (so batches stay full), carved, and the batches shuffled."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mean = max(1.0, sum(lengths) / max(1, len(lengths)))
    per_slice = max(1, int(MEGABATCH_BATCHES * tokens_per_batch / mean))
    batches = []
    for s in range(0, len(order), per_slice):
        part = sorted(order[s : s + per_slice], key=lambda i: -lengths[i])
        batches += _carve(part, lengths, tokens_per_batch)
    rng.shuffle(batches)
    return batches


def _carve(order: list[int], lengths: Sequence[int], tokens_per_batch: int) -> list[list[int]]:
    """Consecutive runs of `order` (longest first) under the padded-token budget."""
    batches, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > tokens_per_batch:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = [
    "DEFAULT_DATA",
    "VAL_SHARE",
    "Example",
    "encode_records",
    "file_sha256",
    "make_example",
    "read_records",
    "shuffled_batches",
    "sorted_batches",
    "split_indices",
]
