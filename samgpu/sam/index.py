"""SamIndex: the static suffix automaton of a token corpus, flattened for the GPU (DESIGN.md §3).

Text: every non-empty document followed by EOS (unless its last token already is EOS, as in the
official SAM-Decoding `add_batch_tokens`), concatenated; then every vocabulary id v as a one-token
document `[v, EOS]` (just `[EOS]` for v = EOS), as the official `tools/gen_sam_*.py` append `[i]`
for every id and the builder then appends EOS. So the root has a transition on every id and any
token matches with length >= 1. Empty documents are skipped.

Arrays (all int32, CPU torch tensors; S states, E edges, T text tokens, V vocab ids):
  length[S]         longest string of the state; length[root] = 0
  link[S]           suffix link; link[root] = NO_STATE
  endpos[S]         EARLIEST end position (index into tokens of the occurrence's last token) of the
                    state's strings; endpos[root] = NO_POSITION
  count[S]          occurrences (size of the end-position set); count[root] = T
  edge_offsets[S+1] CSR offsets, leading 0; state s's edges are [edge_offsets[s], edge_offsets[s+1])
  edge_token[E]     sorted within each state (binary search)
  edge_dst[E]
  root_next[V]      dense root row: the root's transition on v (every id has one)
  tokens[T]         the text, for gathering drafts: tokens[endpos + 1 : endpos + 1 + n]

Example: docs [[0, 1, 0]], V = 2, EOS = 1 -> tokens = [0 1 0 1 | 0 1 | 1];
longest_match([1, 0]) = (2, 2): "1 0" ends first at position 2.

Bytes per corpus token: the flattened arrays cost 20 B per state + 8 B per edge + 4 B per token;
`stats()` reports them with and without the dense `root_next` (4 B per vocab id).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from samgpu.sam import _build, _validate
from samgpu.sam.storage import ARRAY_NAMES, fix_hint, read_index, save_index

NO_STATE: int = _build.NO_STATE  # == samgpu.types.NO_STATE (samgpu.sam imports no runtime module)
NO_POSITION: int = -1  # endpos of the root
_CHUNK_TOKENS: int = 1 << 20  # tokens per call into the numba core (progress granularity)
_MIN_CAPACITY: int = 1 << 16  # initial construction capacity (tokens) without a size hint


@dataclass(eq=False)
class SamIndex:
    """Static suffix automaton over a token corpus; see the module docstring for the layout."""

    length: torch.Tensor  # [S] int32
    link: torch.Tensor  # [S] int32
    endpos: torch.Tensor  # [S] int32
    count: torch.Tensor  # [S] int32
    edge_offsets: torch.Tensor  # [S+1] int32
    edge_token: torch.Tensor  # [E] int32
    edge_dst: torch.Tensor  # [E] int32
    root_next: torch.Tensor  # [V] int32
    tokens: torch.Tensor  # [T] int32
    vocab_size: int
    eos_id: int
    tokenizer_fingerprint: str = ""
    extra: dict = field(default_factory=dict)  # JSON-able provenance (corpus, sizes), saved
    build_info: dict = field(default_factory=dict)  # build timings of this process, not saved
    # validate() passed (set by build, load and validate; not saved)
    is_validated: bool = field(default=False, init=False, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        docs: Iterable[Sequence[int] | np.ndarray],
        *,
        vocab_size: int,
        eos_id: int,
        tokenizer_fingerprint: str = "",
        progress: bool = False,
        expected_tokens: int = 0,
    ) -> SamIndex:
        """Build from an iterable of token documents (streamed: each is made int32 on arrival
        and buffered into chunks of ~1M tokens for the compiled core). `expected_tokens`, a
        size hint, presizes the construction arrays (growing them costs ~20%) and the progress
        bar."""
        _check_vocab(vocab_size, eos_id)
        builder = _Builder(vocab_size, eos_id, progress=progress, expected_tokens=expected_tokens)
        try:
            return cls._stream(builder, docs, vocab_size, eos_id, tokenizer_fingerprint)
        finally:
            builder.close()

    @staticmethod
    def _stream(builder, docs, vocab_size: int, eos_id: int, tokenizer_fingerprint: str):
        pending: list[np.ndarray] = []
        num_pending = 0
        for i, doc in enumerate(docs):
            arr = np.asarray(doc)
            if arr.ndim != 1:
                raise ValueError(f"document {i} must be 1-D token ids, got shape {arr.shape}")
            if arr.size == 0:
                continue
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"document {i} must hold integer token ids, got dtype {arr.dtype}")
            _check_ids(arr, vocab_size, f"document {i}")
            pending.append(arr.astype(np.int32, copy=False))
            num_pending += arr.size + 1
            if arr[-1] != eos_id:
                pending.append(np.array([eos_id], dtype=np.int32))
            if num_pending >= _CHUNK_TOKENS:
                builder.feed(np.concatenate(pending))
                pending, num_pending = [], 0
        if pending:
            builder.feed(np.concatenate(pending))
        return builder.finish(tokenizer_fingerprint)

    @classmethod
    def from_text_arrays(
        cls,
        tokens: np.ndarray,
        doc_offsets: np.ndarray,
        *,
        vocab_size: int,
        eos_id: int,
        tokenizer_fingerprint: str = "",
        progress: bool = False,
    ) -> SamIndex:
        """Build from one flat token array and document boundaries `doc_offsets[D+1]` (leading 0,
        non-decreasing, last = len(tokens)); document d is tokens[doc_offsets[d]:doc_offsets[d+1]].
        Same text as `build` (EOS inserted after documents not ending with it), vectorised."""
        _check_vocab(vocab_size, eos_id)
        tokens = np.asarray(tokens)
        offsets = np.asarray(doc_offsets, dtype=np.int64)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}"
            )
        if offsets.ndim != 1 or offsets.size < 1:
            raise ValueError(f"doc_offsets must be 1-D with a leading 0, got shape {offsets.shape}")
        if offsets[0] != 0 or offsets[-1] != tokens.size or np.any(np.diff(offsets) < 0):
            raise ValueError(
                f"doc_offsets must start at 0, be non-decreasing and end at len(tokens)="
                f"{tokens.size}; got first {offsets[0]}, last {offsets[-1]}"
            )
        _check_ids(tokens, vocab_size, "tokens")
        lens = np.diff(offsets)
        keep = lens > 0
        starts, ends, lens = offsets[:-1][keep], offsets[1:][keep], lens[keep]
        needs_eos = tokens[ends - 1] != eos_id
        out_len = lens + needs_eos
        out_ends = np.cumsum(out_len)
        out = np.empty(int(out_ends[-1]) if out_ends.size else 0, dtype=np.int32)
        # Token j of (non-empty) document d lands at j + (EOS inserted before d); empty documents
        # hold no tokens, so every token belongs to a kept document.
        out[np.arange(tokens.size) + np.repeat(out_ends - out_len - starts, lens)] = tokens
        out[(out_ends - 1)[needs_eos]] = eos_id
        builder = _Builder(vocab_size, eos_id, progress=progress, expected_tokens=out.size)
        try:
            for lo in range(0, out.size, _CHUNK_TOKENS):
                builder.feed(out[lo : lo + _CHUNK_TOKENS])
            return builder.finish(tokenizer_fingerprint)
        finally:
            builder.close()

    # ------------------------------------------------------------------ queries
    @property
    def num_states(self) -> int:
        return self.length.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_token.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    def longest_match(self, query: Sequence[int] | np.ndarray) -> tuple[int, int]:
        """(length of the longest suffix of `query` occurring in `tokens`, earliest end position of
        that suffix in `tokens`). (0, NO_POSITION) for an empty query. Host reference for tests.
        Example: tokens "a b a b" -> longest_match("x b a") = (2, 2) ("b a" ends first at 2)."""
        q = np.asarray(query, dtype=np.int64).reshape(-1)
        if q.size == 0:
            return 0, NO_POSITION
        _check_ids(q, self.vocab_size, "query")
        state, match_len = self.match_state(q)
        if match_len == 0:
            return 0, NO_POSITION
        return match_len, int(self.endpos[state])

    def match_state(self, query: Sequence[int] | np.ndarray) -> tuple[int, int]:
        """(state, match_len) after matching `query` from the root (DESIGN.md §3 matching rule)."""
        q = np.asarray(query, dtype=np.int64).reshape(-1)
        _check_ids(q, self.vocab_size, "query")
        state, match_len = _build.sam_longest_match(
            q,
            self.edge_offsets.numpy(),
            self.edge_token.numpy(),
            self.edge_dst.numpy(),
            self.length.numpy(),
            self.link.numpy(),
        )
        return int(state), int(match_len)

    def stats(self) -> dict:
        """Sizes; `bytes` counts every saved array, `bytes_per_token` divides by the corpus tokens
        (the text, singletons included); `*_no_root` leaves out the dense root_next row."""
        nbytes = {name: getattr(self, name).numel() * 4 for name in ARRAY_NAMES}
        degree = np.diff(self.edge_offsets.numpy())
        total = sum(nbytes.values())
        num_tokens = max(self.num_tokens, 1)
        return {
            "tokens": self.num_tokens,
            "states": self.num_states,
            "edges": self.num_edges,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "bytes": total,
            "bytes_per_token": round(total / num_tokens, 3),
            "bytes_no_root": total - nbytes["root_next"],
            "bytes_per_token_no_root": round((total - nbytes["root_next"]) / num_tokens, 3),
            "states_per_token": round(self.num_states / num_tokens, 4),
            "edges_per_token": round(self.num_edges / num_tokens, 4),
            # Out-degree histogram: a GPU layout with one inline edge per state serves most lookups.
            "states_degree_0": int((degree == 0).sum()),
            "states_degree_1": int((degree == 1).sum()),
            "states_degree_2plus": int((degree >= 2).sum()),
            "max_length": int(self.length.max()) if self.num_states else 0,
            "array_bytes": nbytes,
        }

    def validate(self, *, deep: bool = True) -> None:
        """Check shapes, dtypes and the structural invariants (samgpu/sam/_validate.py) in one
        compiled pass; ValueError naming the first violation. deep=False, what `load` runs on
        every file, checks what memory safety and termination need: ids in range, suffix links
        strictly shorter (so acyclic), CSR sorted, endpos in range, counts >= 1, root row
        complete, EOS in the vocabulary. deep=True also checks that edges lead to longer states
        and that counts are the link-tree sums (a random read per edge, ~5x the time). Neither
        proves the automaton is the suffix automaton of `tokens` (that needs a rebuild)."""
        problem = self.find_problem(deep=deep)
        if problem is not None:
            raise ValueError(f"invalid SamIndex: {problem}")

    def find_problem(self, *, deep: bool = True) -> str | None:
        """validate() as a value: None if valid (and is_validated is set), else the message."""
        self.is_validated = False
        try:
            _check_vocab(self.vocab_size, self.eos_id)
        except ValueError as exc:
            return str(exc)
        for name in ARRAY_NAMES:
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.ndim != 1:
                return f"{name} must be a 1-D int32 tensor, got {_describe(t)}"
            if not t.is_contiguous() or t.device.type != "cpu":
                return f"{name} must be a contiguous CPU tensor"
        num_states = self.num_states
        if num_states < 1:
            return "an index needs at least the root state"
        for name in ("link", "endpos", "count"):
            if getattr(self, name).shape[0] != num_states:
                return (
                    f"{name} {tuple(getattr(self, name).shape)} and length {(num_states,)} "
                    "disagree on num_states"
                )
        if self.edge_offsets.shape[0] != num_states + 1:
            return (
                f"edge_offsets {tuple(self.edge_offsets.shape)} must have num_states + 1 = "
                f"{num_states + 1} entries"
            )
        if self.edge_dst.shape != self.edge_token.shape:
            return (
                f"edge_dst {tuple(self.edge_dst.shape)} and edge_token "
                f"{tuple(self.edge_token.shape)} disagree on num_edges"
            )
        if self.root_next.shape[0] != self.vocab_size:
            shape = tuple(self.root_next.shape)
            return f"root_next {shape} must have vocab_size = {self.vocab_size} entries"
        a = {name: getattr(self, name).numpy() for name in ARRAY_NAMES}
        args = (*(a[name] for name in ARRAY_NAMES), int(self.vocab_size))  # sam_validate's order
        if deep or not _validate.sam_is_valid(*args):
            code, where = _validate.sam_validate(*args, bool(deep))
            if code != _validate.OK:
                return _validate.describe(code, where, a, self.vocab_size)
        self.is_validated = True
        return None

    def ensure_valid(self) -> SamIndex:
        """validate(deep=False) unless this object passed a validation already (build and load
        set the flag; it does not notice later in-place edits of the tensors). Returns self."""
        if not self.is_validated:
            self.validate(deep=False)
        return self

    # ------------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike) -> Path:
        """Write the one-file format (samgpu.sam.storage); atomic (temporary name, then rename)."""
        return save_index(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = True) -> SamIndex:
        """Read a file written by `save`, then validate it (validate(deep=False), always): a
        ValueError naming the file for any bad header, checksum or structure. With mmap the
        arrays are copy-on-write views of the mapped file: never rewrite the file in place while
        it is loaded (a truncation kills the reader with SIGBUS); `save` replaces it by rename,
        which is safe. verify checks the payload checksums (reads every page once)."""
        path = Path(path)
        meta, arrays = read_index(path, mmap=mmap, verify=verify)
        index = cls(
            **arrays,
            vocab_size=meta["vocab_size"],
            eos_id=meta["eos_id"],
            tokenizer_fingerprint=meta["tokenizer_fingerprint"],
            extra=dict(meta.get("extra") or {}),
        )
        problem = index.find_problem(deep=False)
        if problem is not None:
            raise ValueError(f"SAM index {path} is invalid: {problem}; {fix_hint(path)}")
        return index

    def check_tokenizer(self, fingerprint: str, path_hint: str | os.PathLike = "") -> None:
        """Raise ValueError unless this index was built for the tokenizer with `fingerprint`."""
        if fingerprint != self.tokenizer_fingerprint:
            where = f" {path_hint}" if path_hint else ""
            raise ValueError(
                f"SAM index{where} was built for tokenizer {self.tokenizer_fingerprint[:12] or '?'}"
                f" but the model's tokenizer is {fingerprint[:12]}: drafts would be wrong tokens. "
                "Rebuild it with `samgpu index build --tokenizer <model> --out <path>` (or drop "
                "--index to use the default index for this tokenizer)."
            )

    def equal(self, other: SamIndex) -> bool:
        """Same arrays and metadata."""
        return (
            self.vocab_size == other.vocab_size
            and self.eos_id == other.eos_id
            and self.tokenizer_fingerprint == other.tokenizer_fingerprint
            and all(torch.equal(getattr(self, n), getattr(other, n)) for n in ARRAY_NAMES)
        )


class _Builder:
    """Streaming driver around the numba core: owns the growing construction arrays."""

    def __init__(
        self, vocab_size: int, eos_id: int, *, progress: bool = False, expected_tokens: int = 0
    ):
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.num_doc_tokens = 0
        self.started = time.perf_counter()
        self.compute_seconds = 0.0  # time inside the build itself (not waiting for documents)
        cap_tokens = max(expected_tokens, _MIN_CAPACITY) + 2 * vocab_size
        # Measured on the datastore text: ~1.4 states and ~0.8 overflow edges (edges beyond a
        # state's first) per token. Capacities grow on demand; the table rehashes at load 1/2.
        self.st = _build.new_state_records(cap_tokens * 3 // 2 + 16)
        cap_over = cap_tokens * 7 // 8 + vocab_size
        self.o_tok = np.empty(cap_over, dtype=np.int32)
        self.o_next = np.empty(cap_over, dtype=np.int32)
        num_slots = 2 * cap_over + 16
        self.ht = np.full(2 * num_slots, -1, dtype=np.int64)
        self.meta = np.array([1, 0, 0, 0, num_slots, 0], dtype=np.int64)
        self.tokens = np.empty(cap_tokens, dtype=np.int32)
        self.bar = None
        self.progress = progress
        self.expected_tokens = expected_tokens
        self.compute_seconds += time.perf_counter() - self.started  # allocation counts

    def feed(self, text: np.ndarray) -> None:
        """Append validated int32 tokens (documents already EOS-terminated)."""
        start = time.perf_counter()
        n = int(self.meta[3])
        if n + text.size > self.tokens.size:
            grown = np.empty(max(n + text.size, self.tokens.size * 3 // 2), dtype=np.int32)
            grown[:n] = self.tokens[:n]
            self.tokens = grown
        self.tokens[n : n + text.size] = text
        self.st, self.o_tok, self.o_next, self.ht = _build.sam_extend(
            np.ascontiguousarray(text, dtype=np.int32),
            self.st,
            self.o_tok,
            self.o_next,
            self.ht,
            self.meta,
        )
        self.compute_seconds += time.perf_counter() - start
        if self.progress:
            if self.bar is None:  # created on the first chunk: no bar for input that fails early
                from tqdm import tqdm

                total = self.expected_tokens or None
                self.bar = tqdm(total=total, unit="tok", unit_scale=True, desc="SAM build")
            self.bar.update(text.size)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.total = self.bar.n  # (the total was an estimate, ~4 bytes a token): 100%
            self.bar.refresh()
            self.bar.close()
            self.bar = None

    def finish(self, tokenizer_fingerprint: str) -> SamIndex:
        self.num_doc_tokens = int(self.meta[3])
        if self.num_doc_tokens == 0:
            raise ValueError(
                "empty corpus: no document has any token; give at least one non-empty document "
                "(check the corpus files and --fields)"
            )
        self.close()  # the bar counts corpus tokens: closed before the vocabulary singletons,
        self.progress = False  # which get no bar of their own (one stuck at 5% did)
        self.feed(_vocab_singletons(self.vocab_size, self.eos_id))
        start = time.perf_counter()
        num_states, _, _, num_tokens, _, num_edges = (int(x) for x in self.meta)
        offsets, tok, dst = _build.sam_flatten(self.st, num_states, self.ht)
        assert offsets[-1] == num_edges
        self.ht = self.o_tok = self.o_next = None  # free before the copies below
        st = self.st[:num_states]
        length = np.ascontiguousarray(st[:, _build.ST_LENGTH])
        link = np.ascontiguousarray(st[:, _build.ST_LINK])
        endpos = np.ascontiguousarray(st[:, _build.ST_ENDPOS])
        tokens = self.tokens[:num_tokens].copy()
        self.st = self.tokens = st = None
        count = _build.sam_counts(length, link, endpos)
        root_next = _build.sam_root_next(self.vocab_size, offsets, tok, dst)
        self.compute_seconds += time.perf_counter() - start
        seconds = self.compute_seconds
        t = torch.from_numpy
        index = SamIndex(
            length=t(length),
            link=t(link),
            endpos=t(endpos),
            count=t(count),
            edge_offsets=t(offsets),
            edge_token=t(tok),
            edge_dst=t(dst),
            root_next=t(root_next),
            tokens=t(tokens),
            vocab_size=self.vocab_size,
            eos_id=self.eos_id,
            tokenizer_fingerprint=tokenizer_fingerprint,
            extra={"corpus_tokens": self.num_doc_tokens},
            build_info={
                "build_seconds": round(seconds, 4),
                "build_wall_seconds": round(time.perf_counter() - self.started, 4),
                "build_tokens_per_s": round(num_tokens / seconds, 1) if seconds > 0 else None,
            },
        )
        index.is_validated = True  # valid by construction (tests/sam/test_build.py checks it)
        return index


def _vocab_singletons(vocab_size: int, eos_id: int) -> np.ndarray:
    """[0, EOS, 1, EOS, ..., EOS(alone), ...]: each id as a one-token document + EOS."""
    pairs = np.empty((vocab_size, 2), dtype=np.int32)
    pairs[:, 0] = np.arange(vocab_size, dtype=np.int32)
    pairs[:, 1] = eos_id
    return np.delete(pairs.reshape(-1), 2 * eos_id + 1)


def _check_vocab(vocab_size: int, eos_id: int) -> None:
    if not isinstance(vocab_size, int | np.integer) or not 1 <= vocab_size < 2**31:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if not isinstance(eos_id, int | np.integer) or not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id must lie in [0, vocab_size={vocab_size}), got {eos_id!r}")


def _check_ids(arr: np.ndarray, vocab_size: int, what: str) -> None:
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{what} holds token id {bad} outside the vocabulary [0, {vocab_size}); "
            "was it tokenized with another tokenizer?"
        )


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} {tuple(t.shape)}"
    return type(t).__name__
