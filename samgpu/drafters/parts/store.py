"""The cross-request store as a drafting part: every finished response (optionally with its
prompt) is appended to one GPU suffix automaton shared by all slots, so later requests draft from
earlier answers (SuffixDecoding's global tree, as a suffix automaton). Device layout, eviction and
match semantics: samgpu.automata.StoreAutomaton and kernels/sam_store.py.

Options (`StoreOptions`, part of the options of the methods that draft from automata: `sam`,
`sam+tr`, `sam-tree`, `merged`, `sam+eagle`, `merged+eagle`; the CLI passes them as
`--store PATH` or `-O store=PATH -O store_tokens=N ...`):
- `store`: False (default: no store, every method exactly as without this part), True (an empty
  store), or a path: the store file is loaded at build if it exists, and `save()` writes there;
- `store_tokens` (4,194,304): the budget, over both generations (each holds store_tokens // 2);
  ~92 GPU bytes per token of budget when store_tokens // 2 is a power of two (386 MB by default);
- `store_prompts` (False): documents are the responses (the prompt is the dynamic automaton's
  business, as SuffixDecoding keeps a per-request tree for it), or prompt + response;
- `store_bias` (0): subtracted from the store's match length in the selection rule
  (kernels/sam_draft.py); 0 puts the store on a par with the dynamic automaton (which wins ties),
  ahead of the static corpus, whose length `sam+tr` and `merged` reduce by l_bias = 5;
- `store_fingerprint`: the tokenizer fingerprint (samgpu.sam.tokenizer_fingerprint) written to
  and checked against store files; by default the static index's.

Why off by default: the store costs memory fixed at build (386 MB at the default budget) and an
append after every finished request on the critical path (~0.8 us per token, one GPU thread);
it pays when requests repeat (batched offline generation, agents), which profiling/bench_store.py
measures; turn it on there.

Lifecycle: `start` sets up the new rows' matches by walking their prompts; `update` is fused into
the automata's per-step launch (samgpu/drafters/parts/automata.py, kernels/sam_update.py);
`finish(state, rows)` appends text[rows, prompt_len:text_len] (or from 0 with store_prompts) in
kernel launches, no host read; `save(path)` / `load(path)` (the format: store_file.py).

Example: after request A answers "x y z EOS", request B whose text ends in "x y" drafts "z EOS"
from the store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from samgpu.automata import StoreAutomaton
from samgpu.drafters.parts.store_file import (
    read_store_file,
    read_store_header,
    save_store_file,
    surviving_start,
)
from samgpu.drafters.protocol import NewRequests
from samgpu.kernels.sam_store import NUM_GENERATIONS, max_capacity
from samgpu.types import DecodeState

DEFAULT_STORE_TOKENS: int = 1 << 22


@dataclass(frozen=True, kw_only=True)
class StoreOptions:
    """The store's options, mixed into the options of the automaton methods (module docstring)."""

    store: bool | str | os.PathLike | None = False  # False/None: off; True: empty; path: file
    store_tokens: int = DEFAULT_STORE_TOKENS  # budget over both generations
    store_prompts: bool = False  # documents are prompt + response (else the response)
    store_bias: int = 0  # subtracted from the store match length when selecting
    store_fingerprint: str = ""  # tokenizer fingerprint for store files ("": the index's)

    def __post_init__(self) -> None:
        s = self.store
        if s is not None and not isinstance(s, (bool, str, os.PathLike)):
            raise ValueError(f"store must be true, false or a file path, got {s!r:.60}")
        if isinstance(s, str) and not s.strip():
            raise ValueError("store='' names no file: pass a path, or store=true for no file")
        path = self.store_path
        if path is not None and path.is_dir():
            raise ValueError(f"store={str(path)!r} is a folder; give the store file's path")
        if path is not None and path.exists():
            read_store_header(path)  # a damaged or foreign file fails here, before any build
        n = self.store_tokens
        if type(n) is not int or n < 2 * NUM_GENERATIONS:
            raise ValueError(f"store_tokens must be an int >= {2 * NUM_GENERATIONS}, got {n!r}")
        if type(self.store_bias) is not int:
            raise ValueError(f"store_bias must be an int, got {self.store_bias!r}")
        if type(self.store_prompts) is not bool:
            raise ValueError(f"store_prompts must be true or false, got {self.store_prompts!r}")
        if not isinstance(self.store_fingerprint, str):
            raise ValueError(f"store_fingerprint must be a string, got {self.store_fingerprint!r}")

    @property
    def has_store(self) -> bool:
        return self.store is not None and self.store is not False

    @property
    def store_path(self) -> Path | None:
        return None if isinstance(self.store, bool) or self.store is None else Path(self.store)


def index_fingerprint(index) -> str:
    """The tokenizer fingerprint a static index source carries ("" if none is known)."""
    fp = getattr(index, "tokenizer_fingerprint", None)
    if isinstance(fp, str):
        return fp
    if isinstance(index, (str, os.PathLike)):
        from samgpu.sam import read_header

        try:
            return str(read_header(index).get("tokenizer_fingerprint", ""))
        except ValueError:
            return ""
    return ""


class SamStore:
    """The cross-request store of a drafter: device automaton, lifecycle hooks, file I/O."""

    def __init__(
        self,
        options: StoreOptions,
        *,
        vocab_size: int,
        max_reqs: int,
        device: torch.device | str,
        fingerprint: str = "",
    ):
        capacity = options.store_tokens // NUM_GENERATIONS
        if capacity > max_capacity(vocab_size):
            raise ValueError(
                f"store_tokens={options.store_tokens} exceeds the largest store for a vocabulary "
                f"of {vocab_size} ids ({NUM_GENERATIONS * max_capacity(vocab_size)} tokens)"
            )
        self.automaton = StoreAutomaton(max_reqs, capacity, vocab_size, device)
        self.with_prompts = options.store_prompts
        self.fingerprint = options.store_fingerprint or fingerprint
        self.path = options.store_path
        self.num_loaded = 0  # documents loaded from a file
        if self.path is not None and self.path.exists():
            self.load(self.path)

    @property
    def vocab_size(self) -> int:
        return self.automaton.vocab_size

    def start(self, state: DecodeState, new: NewRequests) -> None:
        """Slots new.rows got prompts: their store matches walk the committed text (the prompt)."""
        self.automaton.start_rows(new.rows, state.text, new.lengths)

    def finish(self, state: DecodeState, rows: torch.Tensor) -> None:
        """Append the finished rows' responses (or prompt + response) in row order: a few small
        device ops and one kernel launch, no host read."""
        if rows.numel() == 0:
            return
        rows = rows.to(device=state.text.device, dtype=torch.int64).contiguous()
        ends = state.text_len.index_select(0, rows)
        starts = (
            torch.zeros_like(ends) if self.with_prompts else state.prompt_len.index_select(0, rows)
        )
        self.automaton.append(state.text, rows, starts.contiguous(), ends.contiguous())

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the stored documents (oldest first) to `path` (default: the `store` option's
        path) atomically. Reads the store on the host: call it between runs, not per step."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("no store file: pass a path, or build with store=PATH")
        a = self.automaton
        extra = {
            "store_tokens": NUM_GENERATIONS * a.capacity,
            "store_prompts": self.with_prompts,
            "rotations": int(a.num_rotations[0]),
        }
        return save_store_file(
            path,
            a.documents(),
            vocab_size=a.vocab_size,
            tokenizer_fingerprint=self.fingerprint,
            extra=extra,
        )

    def load(self, path: str | os.PathLike) -> int:
        """Empty the store, then append a store file's documents (those a store of this budget
        keeps: the eviction rule applied on the host first). Returns the documents appended."""
        fp = self.fingerprint
        f = read_store_file(path, vocab_size=self.vocab_size, tokenizer_fingerprint=fp)
        docs = f.documents()
        keep = surviving_start([d.size for d in docs], self.automaton.capacity)
        self.automaton.reset()
        self.automaton.append_docs(docs[keep:])
        self.num_loaded = len(docs) - keep
        return self.num_loaded

    def copy_from(self, other: SamStore) -> None:
        """Take over another store's documents (e.g. when a decoder is rebuilt at a larger
        capacity): its automaton arrays are copied if the budgets agree, else its documents are
        appended; every match starts at the root."""
        a, b = self.automaton, other.automaton
        if (a.capacity, a.vocab_size) == (b.capacity, b.vocab_size):
            for name, t in vars(b).items():
                if isinstance(t, torch.Tensor) and not name.startswith("match_"):
                    getattr(a, name).copy_(t)
            a.match_state.zero_()
            a.match_len.zero_()
        else:
            docs = b.documents()
            a.reset()
            a.append_docs(docs[surviving_start([d.size for d in docs], a.capacity) :])

    def stats(self) -> dict:
        """Sizes (one host read): tokens, documents, states, edges per generation, rotations,
        device bytes and bytes per token of budget."""
        return {**self.automaton.stats(), "store_prompts": self.with_prompts}


def store_of(drafter) -> SamStore | None:
    """The store part of a drafter (None for drafters without one, or with the store off)."""
    automata = getattr(drafter, "automata", None)
    return getattr(automata, "store", None)


def save_store(drafter, path: str | os.PathLike | None = None) -> Path | None:
    """Save a drafter's store (to `path`, default its `store` option's file); None when the
    drafter has no store or neither a path nor a store file was given. The call the CLI and the
    API make at the end of a run."""
    store = store_of(drafter)
    if store is None or (path is None and store.path is None):
        return None
    return store.save(path)


def store_file_stats(path: str | os.PathLike) -> dict:
    """A store file's header fields (cheap: the header only)."""
    meta = read_store_header(path)
    keep = ("vocab_size", "tokenizer_fingerprint", "num_docs", "num_tokens", "file_size", "extra")
    return {k: meta[k] for k in keep}


__all__ = [
    "DEFAULT_STORE_TOKENS",
    "SamStore",
    "StoreOptions",
    "index_fingerprint",
    "save_store",
    "store_file_stats",
    "store_of",
]
