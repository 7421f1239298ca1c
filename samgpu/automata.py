"""Device-side automaton state: the static index's arrays on the GPU, the per-sequence dynamic
automaton slots, the cross-request store (StoreAutomaton), and the per-sequence matches. Thin
holders of preallocated tensors; the work is done by the kernels (`samgpu.kernels.sam_match`,
`sam_dynamic`, `sam_store`, `sam_store_match`, `sam_draft`).

    static = StaticAutomaton.from_index(index, "cuda")   # once; arrays moved to the device
    smatch = static.new_matches(max_reqs)                # (state, match_len) per sequence
    dyn = DynamicAutomata(max_reqs, capacity, vocab_size, "cuda")
    dyn.prefill(prompts, prompt_lens)                    # set-up: validates, builds on the GPU
    static.prefill(smatch, prompts, prompt_lens)
    ...each step: static.advance(smatch, new_tokens, num_new); dyn.extend(new_tokens, num_new)

Example: prompt "1 2 3 1 2" -> dyn.match_len = [2] (the suffix "1 2" occurred before, ending at
position 1) and a dynamic draft would be text[2:] = "3 1 2".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from samgpu.kernels import sam_dynamic as _dyn
from samgpu.kernels.sam_dynamic import hash_size, sam_dynamic_extend
from samgpu.kernels.sam_match import sam_match
from samgpu.kernels.sam_store import EMPTY as STORE_EMPTY
from samgpu.kernels.sam_store import NUM_GENERATIONS, packing, sam_store_append
from samgpu.kernels.sam_store import hash_size as store_hash_size
from samgpu.kernels.sam_store_match import sam_store_match
from samgpu.types import NO_EDGE, NO_POSITION, NO_STATE, ROOT_STATE

EDGE_TOKEN_U16_VOCAB: int = 1 << 16  # largest vocabulary whose edge labels fit uint16


@dataclass
class Matches:
    """Per-sequence match in one automaton: the longest suffix of the committed text found in it."""

    state: torch.Tensor  # [B] int32; ROOT_STATE when nothing matches
    match_len: torch.Tensor  # [B] int32; 0 when nothing matches

    @staticmethod
    def empty(num_reqs: int, device: torch.device | str) -> Matches:
        return Matches(
            torch.zeros(num_reqs, dtype=torch.int32, device=device),
            torch.zeros(num_reqs, dtype=torch.int32, device=device),
        )

    def reset(self) -> None:
        """Back to the root (no sync; capturable)."""
        self.state.fill_(ROOT_STATE)
        self.match_len.zero_()

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Rows `rows` [n] int64 back to the root (no sync)."""
        self.state.index_fill_(0, rows, ROOT_STATE)
        self.match_len.index_fill_(0, rows, 0)


@dataclass(eq=False)
class StaticAutomaton:
    """The static index (samgpu.sam.SamIndex) on the device. Shared by all sequences, read-only."""

    length: torch.Tensor  # [S] int32
    link: torch.Tensor  # [S] int32
    endpos: torch.Tensor  # [S] int32; earliest end position; NO_POSITION for the root
    count: torch.Tensor  # [S] int32; occurrences (for tree drafts; [0] if loaded without)
    edge_offsets: torch.Tensor  # [S+1] int32; CSR, leading 0
    edge_token: torch.Tensor  # [E] uint16 when vocab_size <= 65,536, else int32; sorted per state
    edge_dst: torch.Tensor  # [E] int32
    root_next: torch.Tensor  # [V] int32; root's transition per token, NO_STATE if none
    tokens: torch.Tensor  # [T] int32; the corpus text (documents + EOS, then singletons)
    vocab_size: int
    eos_id: int

    @classmethod
    def from_index(
        cls,
        index,
        device: torch.device | str,
        *,
        with_count: bool = True,
        compact_edges: bool = True,
    ) -> StaticAutomaton:
        """Copy a `SamIndex`'s arrays to `device` once (int32, contiguous). Chain drafts never
        read `count` (tree drafts do): with_count=False leaves it empty and saves 4 bytes per
        state (~5.5 bytes per corpus token). compact_edges stores edge labels as uint16 when the
        vocabulary fits (<= 65,536 ids; the kernels widen each load): 2 bytes per edge, ~4.3
        per corpus token on the default corpus."""
        names = ("length", "link", "endpos", "count", "edge_offsets", "edge_token", "edge_dst")
        arrays = {}
        for name in (*names, "root_next", "tokens"):
            t = getattr(index, name)
            if name == "count" and not with_count:
                arrays[name] = torch.empty(0, dtype=torch.int32, device=device)
                continue
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.ndim != 1:
                raise ValueError(f"index.{name} must be a 1-D int32 tensor, got {t!r:.80}")
            arrays[name] = t.to(device).contiguous()
        if compact_edges and index.vocab_size <= EDGE_TOKEN_U16_VOCAB:
            arrays["edge_token"] = arrays["edge_token"].to(torch.uint16)
        if arrays["root_next"].shape[0] != index.vocab_size:
            raise ValueError(
                f"index.root_next has {arrays['root_next'].shape[0]} entries for vocab_size "
                f"{index.vocab_size}"
            )
        return cls(**arrays, vocab_size=int(index.vocab_size), eos_id=int(index.eos_id))

    @property
    def device(self) -> torch.device:
        return self.length.device

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor)
        )

    def new_matches(self, num_reqs: int) -> Matches:
        return Matches.empty(num_reqs, self.device)

    def advance(self, matches: Matches, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
        """Advance matches [B] over new_tokens[b, :num_new[b]] (no sync; capturable)."""
        sam_match(self, new_tokens, num_new, matches.state, matches.match_len)

    def start_rows(
        self, matches: Matches, rows: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor
    ) -> None:
        """Slots `rows` got new prompts: their matches restart at the root and advance over
        text[b, :lengths[b]] ([B, T]; lengths [B] int32, 0 on every other row, which keeps its
        match). No validation and no sync (the engine validated the prompts)."""
        matches.reset_rows(rows)
        self.advance(matches, text, lengths)

    def prefill(self, matches: Matches, prompts: torch.Tensor, prompt_lens: torch.Tensor) -> None:
        """Reset the first B matches to the root and advance them over the prompts [B, T]."""
        _check_prompts(prompts, prompt_lens, self.vocab_size, matches.state.shape[0], None)
        b = prompts.shape[0]
        view = Matches(matches.state[:b], matches.match_len[:b])
        view.reset()
        self.advance(view, prompts, prompt_lens)


class DynamicAutomata:
    """One suffix automaton per sequence slot, of capacity `capacity` tokens, built on the device.

    Layout and algorithm: `samgpu.kernels.sam_dynamic` (states [R, 2C], edge lists [R, 3C], an
    open-addressing table [R, H] of packed int64 transitions with H = next_pow2(6C), text [R, C]).
    Memory: `bytes_per_token` = 108..156 bytes per slot and token of capacity (`nbytes` in total).
    Limits: capacity <= 2**20 tokens, vocab_size <= 2**21.
    The match (`matches`) is advanced together with every extension, match first.
    """

    def __init__(
        self, max_reqs: int, capacity: int, vocab_size: int, device: torch.device | str
    ) -> None:
        for name, v in (("max_reqs", max_reqs), ("capacity", capacity), ("vocab_size", vocab_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if capacity > _dyn.MAX_CAPACITY:
            raise ValueError(
                f"capacity {capacity} exceeds {_dyn.MAX_CAPACITY} tokens (packed 21-bit states)"
            )
        if vocab_size > _dyn.MAX_VOCAB:
            raise ValueError(f"vocab_size {vocab_size} exceeds {_dyn.MAX_VOCAB} (21-bit token ids)")
        self.max_reqs = max_reqs
        self.capacity = capacity
        self.vocab_size = vocab_size

        def i32(*shape: int, fill: int = 0) -> torch.Tensor:
            return torch.full(shape, fill, dtype=torch.int32, device=device)

        s_cap, e_cap = 2 * capacity, 3 * capacity
        self.length = i32(max_reqs, s_cap)  # [R, 2C]
        self.link = i32(max_reqs, s_cap, fill=NO_STATE)  # [R, 2C]
        self.endpos = i32(max_reqs, s_cap, fill=NO_POSITION)  # [R, 2C]
        self.first_edge = i32(max_reqs, s_cap, fill=NO_EDGE)  # [R, 2C]
        self.edge_next = i32(max_reqs, e_cap, fill=NO_EDGE)  # [R, 3C]
        self.edge_slot = i32(max_reqs, e_cap)  # [R, 3C]; hash slot of the edge's entry
        self.hash = torch.full(  # [R, H] int64 packed (src, token, dst), EMPTY = -1
            (max_reqs, hash_size(capacity)), _dyn.EMPTY, dtype=torch.int64, device=device
        )
        self.tokens = i32(max_reqs, capacity)  # [R, C]
        self.num_states = i32(max_reqs, fill=1)  # [R]; the root
        self.num_edges = i32(max_reqs)  # [R]
        self.last = i32(max_reqs)  # [R]; state of the whole text
        self.text_len = i32(max_reqs)  # [R]
        self.match_state = i32(max_reqs)  # [R]
        self.match_len = i32(max_reqs)  # [R]

    @property
    def device(self) -> torch.device:
        return self.length.device

    @property
    def matches(self) -> Matches:
        return Matches(self.match_state, self.match_len)

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor)
        )

    @property
    def bytes_per_token(self) -> float:
        """Device bytes per slot and token of capacity."""
        return self.nbytes / (self.max_reqs * self.capacity)

    def reset(self, num_reqs: int | None = None) -> None:
        """Empty the first `num_reqs` slots (all by default): root only, empty table (no sync)."""
        b = self.max_reqs if num_reqs is None else num_reqs
        self.length[:b, 0] = 0
        self.link[:b, 0] = NO_STATE
        self.endpos[:b, 0] = NO_POSITION
        self.first_edge[:b, 0] = NO_EDGE
        self.hash[:b].fill_(_dyn.EMPTY)
        self.num_states[:b] = 1
        for t in (self.num_edges, self.last, self.text_len, self.match_state, self.match_len):
            t[:b] = 0

    def prefill(self, prompts: torch.Tensor, prompt_lens: torch.Tensor) -> None:
        """Set-up for a batch: empty slots 0..B-1, then build each from prompts[b, :prompt_lens[b]]
        (match then extend per token, on the device). Validates the prompts once (one host sync):
        batch <= max_reqs, length <= capacity, ids in [0, vocab_size)."""
        _check_prompts(prompts, prompt_lens, self.vocab_size, self.max_reqs, self.capacity)
        self.reset(prompts.shape[0])
        sam_dynamic_extend(self, prompts, prompt_lens)

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Empty the slots `rows` [n] int64 (root only, empty table), in place, no sync."""
        for t, root_value in (
            (self.length, 0),
            (self.link, NO_STATE),
            (self.endpos, NO_POSITION),
            (self.first_edge, NO_EDGE),
        ):
            t[:, 0].index_fill_(0, rows, root_value)
        self.hash.index_fill_(0, rows, _dyn.EMPTY)
        self.num_states.index_fill_(0, rows, 1)
        for t in (self.num_edges, self.last, self.text_len, self.match_state, self.match_len):
            t.index_fill_(0, rows, 0)

    def start_rows(self, rows: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor) -> None:
        """Slots `rows` got new prompts: empty them, then build each from text[b, :lengths[b]]
        ([B, T]; lengths [B] int32, 0 on every other row, which is left as it is). No scratch
        automaton, no copies, no validation and no sync (the engine validated the prompts)."""
        self.reset_rows(rows)
        sam_dynamic_extend(self, text, lengths)

    def extend(self, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
        """Decode step: match then extend slot b with new_tokens[b, :num_new[b]] (no sync;
        capturable). Tokens past the capacity are matched but not stored."""
        sam_dynamic_extend(self, new_tokens, num_new)


class StoreAutomaton:
    """The cross-request store on the device: one suffix automaton of earlier documents (e.g.
    finished responses), shared by all sequences, in two generations of `capacity` tokens (the
    active one is filled, the older one queried too; when the active one is full the older one is
    emptied and filled next), with each sequence's match in each generation.

    Layout, algorithm, eviction and match semantics: `samgpu.kernels.sam_store`. Memory:
    `nbytes` (~92 bytes per token of capacity, C a power of two: `bytes_per_token`). Documents are
    separated by the token `sep` = vocab_size, which no sequence has.
    """

    def __init__(
        self, max_reqs: int, capacity: int, vocab_size: int, device: torch.device | str
    ) -> None:
        for name, v in (("max_reqs", max_reqs), ("capacity", capacity), ("vocab_size", vocab_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 tokens per generation, got {capacity}")
        packing(capacity, vocab_size)  # ValueError naming the largest budget
        self.max_reqs, self.capacity, self.vocab_size = max_reqs, capacity, vocab_size
        G = NUM_GENERATIONS

        def i32(*shape: int, fill: int = 0) -> torch.Tensor:
            return torch.full(shape, fill, dtype=torch.int32, device=device)

        self.length = i32(G, 2 * capacity)  # [G, 2C]
        self.link = i32(G, 2 * capacity, fill=NO_STATE)  # [G, 2C]
        self.endpos = i32(G, 2 * capacity, fill=NO_POSITION)  # [G, 2C]
        self.first_edge = i32(G, 2 * capacity, fill=NO_EDGE)  # [G, 2C]
        self.edge_next = i32(G, 3 * capacity, fill=NO_EDGE)  # [G, 3C]
        self.edge_slot = i32(G, 3 * capacity)  # [G, 3C]
        self.hash = torch.full(  # [G, H] int64 packed (src, token, dst), EMPTY = -1
            (G, store_hash_size(capacity)), STORE_EMPTY, dtype=torch.int64, device=device
        )
        self.tokens = i32(G, capacity)  # [G, C]
        self.num_states = i32(G, fill=1)  # [G]; the root
        self.num_edges = i32(G)  # [G]
        self.last = i32(G)  # [G]
        self.text_len = i32(G)  # [G]
        self.num_docs = i32(G)  # [G]
        self.active = i32(1)  # [1]; the generation being filled
        self.num_rotations = i32(1)  # [1]
        self.match_state = i32(G, max_reqs)  # [G, R]
        self.match_len = i32(G, max_reqs)  # [G, R]

    @property
    def device(self) -> torch.device:
        return self.hash.device

    @property
    def sep(self) -> int:
        """The document separator token (outside the vocabulary)."""
        return self.vocab_size

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor)
        )

    @property
    def bytes_per_token(self) -> float:
        """Device bytes per token of capacity (both generations)."""
        return self.nbytes / (NUM_GENERATIONS * self.capacity)

    def reset(self) -> None:
        """Empty both generations and every match (no sync)."""
        for name, root in (
            ("length", 0),
            ("link", NO_STATE),
            ("endpos", NO_POSITION),
            ("first_edge", NO_EDGE),
        ):
            getattr(self, name)[:, 0] = root
        self.hash.fill_(STORE_EMPTY)
        self.num_states.fill_(1)
        for t in (self.num_edges, self.last, self.text_len, self.num_docs, self.active):
            t.zero_()
        for t in (self.num_rotations, self.match_state, self.match_len):
            t.zero_()

    def reset_matches(self, rows: torch.Tensor) -> None:
        """Matches of slots `rows` [n] int64 back to the root in both generations (no sync)."""
        self.match_state.index_fill_(1, rows, ROOT_STATE)
        self.match_len.index_fill_(1, rows, 0)

    def start_rows(self, rows: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor) -> None:
        """Slots `rows` got new prompts: their matches restart at the root and advance over
        text[b, :lengths[b]] ([B, T]; lengths [B] int32, 0 on every other row). No sync."""
        self.reset_matches(rows)
        sam_store_match(self, text, lengths)

    def advance(self, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
        """Advance the matches [B] over new_tokens[b, :num_new[b]] (no sync; capturable)."""
        sam_store_match(self, new_tokens, num_new)

    def append(
        self, text: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor
    ) -> None:
        """Append documents text[rows[i], starts[i]:ends[i]] in order (no sync)."""
        sam_store_append(self, text, rows, starts, ends)

    def append_docs(self, docs) -> None:
        """Append host documents (sequences of ids in [0, V)) in order (set-up: loads, tests)."""
        arrays = [np.asarray(d, dtype=np.int64).reshape(-1) for d in docs]
        arrays = [a for a in arrays if a.size]
        if not arrays:
            return
        lengths = np.array([a.size for a in arrays], dtype=np.int64)
        ends = np.cumsum(lengths)
        flat = np.concatenate(arrays)
        if int(flat.min()) < 0 or int(flat.max()) >= self.vocab_size:
            raise ValueError(f"store documents hold ids outside [0, {self.vocab_size})")
        if int(ends[-1]) >= 2**31:
            raise ValueError("store documents exceed 2**31 tokens in one call")
        dev = self.device
        self.append(
            torch.from_numpy(flat.astype(np.int32)).to(dev).view(1, -1),
            torch.zeros(len(arrays), dtype=torch.int64, device=dev),
            torch.from_numpy((ends - lengths).astype(np.int32)).to(dev),
            torch.from_numpy(ends.astype(np.int32)).to(dev),
        )

    def documents(self) -> list[np.ndarray]:
        """The stored documents, oldest first (the older generation's, then the active one's),
        each without its separator, as int32 arrays. Reads the store on the host (one sync: not
        for a step)."""
        active = int(self.active[0])
        lens = self.text_len.tolist()
        docs: list[np.ndarray] = []
        for g in (1 - active, active):
            text = self.tokens[g, : lens[g]].cpu().numpy()
            cuts = np.flatnonzero(text == self.sep).tolist()
            docs += [text[a + 1 : b] for a, b in zip([-1, *cuts[:-1]], cuts, strict=False)]
        return docs

    def stats(self) -> dict:
        """Sizes on the host (one sync): tokens and documents per generation, states, edges,
        rotations, device bytes."""
        return {
            "capacity_per_generation": self.capacity,
            "active": int(self.active[0]),
            "tokens": self.text_len.tolist(),
            "documents": self.num_docs.tolist(),
            "states": self.num_states.tolist(),
            "edges": self.num_edges.tolist(),
            "rotations": int(self.num_rotations[0]),
            "device_bytes": self.nbytes,
            "bytes_per_token_of_capacity": round(self.bytes_per_token, 2),
        }


def _check_prompts(
    prompts: torch.Tensor,
    prompt_lens: torch.Tensor,
    vocab_size: int,
    max_reqs: int,
    capacity: int | None,
) -> None:
    """Set-up validation of a prompt batch (syncs once: not for the decode step)."""
    if prompts.ndim != 2 or prompts.dtype != torch.int32:
        raise ValueError(
            f"prompts must be a [B, T] int32 tensor, got {tuple(prompts.shape)} {prompts.dtype}"
        )
    b = prompts.shape[0]
    if prompt_lens.shape != (b,) or prompt_lens.dtype != torch.int32:
        raise ValueError(
            f"prompt_lens must be [B] int32 with B={b} (prompts {tuple(prompts.shape)}), got "
            f"{tuple(prompt_lens.shape)} {prompt_lens.dtype}"
        )
    if b > max_reqs:
        raise ValueError(f"batch of {b} prompts but only {max_reqs} slots (max_reqs)")
    if b == 0:
        return
    lens = prompt_lens.cpu()
    if int(lens.min()) < 0 or int(lens.max()) > prompts.shape[1]:
        raise ValueError(
            f"prompt_lens must lie in [0, {prompts.shape[1]}] (prompts {tuple(prompts.shape)}), "
            f"got {lens.tolist()}"
        )
    if capacity is not None and int(lens.max()) > capacity:
        raise ValueError(
            f"prompt of {int(lens.max())} tokens exceeds the dynamic automaton capacity "
            f"{capacity}; construct DynamicAutomata with a larger capacity (max context length)"
        )
    cols = torch.arange(prompts.shape[1], device=prompts.device)
    live = cols[None, :] < prompt_lens[:, None]
    bad = live & ((prompts < 0) | (prompts >= vocab_size))
    if bool(bad.any()):
        row, col = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"prompt {row} holds token id {int(prompts[row, col])} at position {col}, outside "
            f"the vocabulary [0, {vocab_size})"
        )
