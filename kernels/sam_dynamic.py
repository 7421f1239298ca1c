"""Dynamic suffix automaton per sequence, built and extended on the GPU, with its match advanced.

Each sequence owns one preallocated slot (row b of every array) holding the suffix automaton of its
committed text (prompt + emitted tokens), capacity C tokens fixed at construction:
- states (at most 2C): `length`, `link`, `endpos` (EARLIEST end position, 0-based; the root has -1),
  `first_edge` (head of the state's edge list) -- each [R, 2C] int32;
- transitions (at most 3C) live in `hash [R, H]` int64, open addressing with linear probing: an
  entry packs (src << 42) | (token << 21) | dst, -1 = free; one load both checks the key and yields
  the destination (the lookup costs one memory round trip). H = next power of two >= 6C, so the load
  factor stays <= 1/2 (~1.5 probes per hit, ~2.5 per miss, mostly in one cache line). A clone's
  redirect rewrites its entries' dst in place; nothing is ever deleted;
- per-state edge lists for clone-copy: `edge_next`, `edge_slot` (the hash slot of the edge's entry)
  -- each [R, 3C] int32;
- `tokens [R, C]` (the text, for drafts) and per slot `num_states`, `num_edges`, `last`, `text_len`,
  and the match `match_state`, `match_len` -- [R] int32.
Limits of the packing: C <= 2**20 tokens, token ids < 2**21 (ids are masked to 21 bits).
Memory per slot: 2C*4*4 (states) + 3C*2*4 (lists) + 8H (table, 48C..96C) + 4C (tokens)
= 108..156 bytes per token of capacity (e.g. C = 8192: 0.9-1.3 MB per sequence).

Per new token c (the official SAM-Decoding order, `DynSAM.add_tokens`): FIRST MATCH, THEN EXTEND.
1. match: advance (match_state, match_len) on c in the automaton of the text so far (climb suffix
   links while there is no transition on c, `match_len = length[state]` at each climb; take it and
   add 1, or fall to the root with 0) -- so the match always points to an earlier occurrence;
2. extend: the classic online construction (new state, walk suffix links adding c-edges, clone with
   copied edges and copied earliest endpos, redirect), store c in `tokens`;
3. normalise: a clone made in step 2 may have split the match state, in which case the match's
   string now belongs to an ancestor: while match_len <= length[link[state]], state = link[state]
   (the reference's loop; the kernel tests the one state that can be split, q, against its clone).
Tokens past the capacity are matched but not added (the automaton is frozen when full).

Example: prompt "1 2 3 1 2": after prefill match_len = 2 ("1 2", earliest endpos 1), so a draft is
text[2:] = "3 1 2"; extending by "3" gives match_len 3 ("1 2 3", endpos 2).

One program per sequence, sequential over its tokens (prefill: the whole prompt). Latency-bound
(a chain of dependent loads): suffix links are loaded together with the hash probe of the same
state, so a climb costs one round trip. num_warps = 1 and a block barrier after every group of
stores that the program reads back: a scalar store is done by one thread while every thread
loads, so without the barrier another thread could read a stale value.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels import _sam_jit
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import debug_checks, use_triton
from samgpu.kernels.types import NO_EDGE, NO_STATE, ROOT_STATE

EMPTY: int = -1  # free hash entry
FIELD_BITS: int = 21  # bits per packed field (src, token, dst)
FIELD_MASK: int = (1 << FIELD_BITS) - 1
MAX_CAPACITY: int = 1 << (FIELD_BITS - 1)  # states < 2C <= 2**21
MAX_VOCAB: int = 1 << FIELD_BITS
_NO_STATE = tl.constexpr(NO_STATE)
_NO_EDGE = tl.constexpr(NO_EDGE)
_EMPTY = tl.constexpr(EMPTY)
_ROOT = tl.constexpr(ROOT_STATE)
_BITS = tl.constexpr(FIELD_BITS)
_MASK = tl.constexpr(FIELD_MASK)
_HASH_MUL_STATE: int = 2654435761  # 0x9E3779B1 (golden-ratio Fibonacci multiplier)
_HASH_MUL_MIX: int = 2246822519  # 0x85EBCA77 (murmur3 constant)

FIELDS_STATE = ("length", "link", "endpos", "first_edge")  # [R, 2C] int32
FIELDS_EDGE = ("edge_next", "edge_slot")  # [R, 3C] int32
FIELDS_SLOT = ("num_states", "num_edges", "last", "text_len", "match_state", "match_len")  # [R]


def hash_size(capacity: int) -> int:
    """Entries of the transition table: a power of two >= 2 x the 3C transition bound."""
    return triton.next_power_of_2(max(16, 6 * capacity))


@triton.jit
def _hash_slot(state, token, h_shift):
    """Home slot of key (state, token) in a table of 2**(32 - h_shift) entries (uint32 math)."""
    x = state.to(tl.uint32) * 2654435761 + token.to(tl.uint32)
    return ((x * 2246822519) >> h_shift.to(tl.uint32)).to(tl.int32)


def _hash_slot_py(state: int, token: int, h_shift: int) -> int:
    x = (state * _HASH_MUL_STATE + token) & 0xFFFFFFFF
    return ((x * _HASH_MUL_MIX) & 0xFFFFFFFF) >> h_shift


@triton.jit
def _probe(hash_ptr, state, token, h_shift, h_mask):
    """(slot, entry): the entry keyed (state, token), or EMPTY and the free slot ending the probe.
    `token` is already masked to 21 bits; entries are >= 0, so EMPTY never matches a key."""
    key = (state.to(tl.int64) << _BITS) | token.to(tl.int64)
    j = _hash_slot(state, token, h_shift)
    entry = tl.load(hash_ptr + j)
    while (entry != _EMPTY) & ((entry >> _BITS) != key):
        j = (j + 1) & h_mask
        entry = tl.load(hash_ptr + j)
    return j, entry


@triton.jit
def _pack(src, token, dst):
    return (src.to(tl.int64) << (2 * _BITS)) | (token.to(tl.int64) << _BITS) | dst.to(tl.int64)


@triton.jit
def dynamic_extend_seq(
    b,  # sequence index = slot, int64
    new_tokens_ptr,  # [B, K] int32, PAD_TOKEN past num_new
    num_new_ptr,  # [B] int32
    length_ptr,  # [R, 2C] int32 (in/out)
    link_ptr,  # [R, 2C] int32 (in/out)
    endpos_ptr,  # [R, 2C] int32 (in/out)
    first_edge_ptr,  # [R, 2C] int32 (in/out)
    edge_next_ptr,  # [R, 3C] int32 (in/out)
    edge_slot_ptr,  # [R, 3C] int32 (in/out)
    hash_ptr,  # [R, H] int64 (in/out)
    tokens_ptr,  # [R, C] int32 (in/out)
    num_states_ptr,  # [R] int32 (in/out)
    num_edges_ptr,  # [R] int32 (in/out)
    last_ptr,  # [R] int32 (in/out)
    text_len_ptr,  # [R] int32 (in/out)
    match_state_ptr,  # [R] int32 (in/out)
    match_len_ptr,  # [R] int32 (in/out)
    stride_new_b,  # row stride of new_tokens
    capacity,  # C
    h_shift,  # 32 - log2(H)
    h_mask,  # H - 1
):
    """Match then extend slot b over its new tokens, in order (the body of the kernel below,
    shared with the fused sam_update kernel)."""
    cap = capacity.to(tl.int64)
    length_ptr += b * 2 * cap
    link_ptr += b * 2 * cap
    endpos_ptr += b * 2 * cap
    first_edge_ptr += b * 2 * cap
    edge_next_ptr += b * 3 * cap
    edge_slot_ptr += b * 3 * cap
    hash_ptr += b * (h_mask.to(tl.int64) + 1)
    tokens_ptr += b * cap

    num_states = tl.load(num_states_ptr + b)
    num_edges = tl.load(num_edges_ptr + b)
    last = tl.load(last_ptr + b)
    pos = tl.load(text_len_ptr + b)
    state = tl.load(match_state_ptr + b)
    match_len = tl.load(match_len_ptr + b)
    num_new = tl.load(num_new_ptr + b)
    for i in range(0, num_new):
        c = tl.load(new_tokens_ptr + b * stride_new_b + i)
        c = c & _MASK
        # 1. match in the automaton of the text before c (each climb: one round trip, the link
        # and length loads go out with the probe of the same state)
        lk = tl.load(link_ptr + state, mask=state != _ROOT, other=_NO_STATE)
        unused_slot, entry = _probe(hash_ptr, state, c, h_shift, h_mask)
        while (entry == _EMPTY) & (state != _ROOT):
            state = lk
            match_len = tl.load(length_ptr + state)
            lk = tl.load(link_ptr + state, mask=state != _ROOT, other=_NO_STATE)
            unused_slot, entry = _probe(hash_ptr, state, c, h_shift, h_mask)
        state = tl.where(entry != _EMPTY, (entry & _MASK).to(tl.int32), _ROOT)
        match_len = tl.where(entry != _EMPTY, match_len + 1, 0)
        # 2. extend (frozen when full)
        if pos < capacity:
            cur = num_states
            num_states += 1
            tl.store(length_ptr + cur, tl.load(length_ptr + last) + 1)
            tl.store(endpos_ptr + cur, pos)
            tl.store(first_edge_ptr + cur, _NO_EDGE)
            p = last
            lp = tl.load(link_ptr + p)
            j, entry = _probe(hash_ptr, p, c, h_shift, h_mask)
            while (p != _NO_STATE) & (entry == _EMPTY):
                tl.store(hash_ptr + j, _pack(p, c, cur))
                tl.store(edge_slot_ptr + num_edges, j)
                tl.store(edge_next_ptr + num_edges, tl.load(first_edge_ptr + p))
                tl.store(first_edge_ptr + p, num_edges)
                num_edges += 1
                tl.debug_barrier()
                p = lp
                lp = tl.load(link_ptr + p, mask=p != _NO_STATE, other=_NO_STATE)
                j, entry = _probe(hash_ptr, p, c, h_shift, h_mask)
            link_cur = tl.full([], _ROOT, tl.int32)
            if p != _NO_STATE:
                q = (entry & _MASK).to(tl.int32)
                len_p = tl.load(length_ptr + p)
                if len_p + 1 == tl.load(length_ptr + q):
                    link_cur = q
                else:
                    clone = num_states
                    num_states += 1
                    tl.store(length_ptr + clone, len_p + 1)
                    tl.store(link_ptr + clone, tl.load(link_ptr + q))
                    tl.store(endpos_ptr + clone, tl.load(endpos_ptr + q))
                    # clone-copy q's edges (prepended: the clone's list is q's reversed)
                    head = tl.full([], _NO_EDGE, tl.int32)
                    f = tl.load(first_edge_ptr + q)
                    while f != _NO_EDGE:
                        f_entry = tl.load(hash_ptr + tl.load(edge_slot_ptr + f))
                        f_next = tl.load(edge_next_ptr + f)
                        t = ((f_entry >> _BITS) & _MASK).to(tl.int32)
                        j2, unused_entry = _probe(hash_ptr, clone, t, h_shift, h_mask)
                        tl.store(hash_ptr + j2, _pack(clone, t, f_entry & _MASK))
                        tl.store(edge_slot_ptr + num_edges, j2)
                        tl.store(edge_next_ptr + num_edges, head)
                        head = num_edges
                        num_edges += 1
                        tl.debug_barrier()
                        f = f_next
                    tl.store(first_edge_ptr + clone, head)
                    # redirect the c-edges of p and its suffix-link ancestors from q to the clone
                    redirect = entry != _EMPTY
                    while redirect:
                        tl.store(hash_ptr + j, _pack(p, c, clone))
                        tl.debug_barrier()
                        p = lp
                        lp = tl.load(link_ptr + p, mask=p != _NO_STATE, other=_NO_STATE)
                        j, entry = _probe(hash_ptr, p, c, h_shift, h_mask)
                        redirect = (p != _NO_STATE) & (entry != _EMPTY) & ((entry & _MASK) == q)
                    tl.store(link_ptr + q, clone)
                    link_cur = clone
                    # 3. normalise the match: q lost its strings of length <= len_p + 1 to the
                    # clone; a match in q that short now belongs to the clone (the only state
                    # whose class changed, so one test replaces the reference's climb loop)
                    state = tl.where((state == q) & (match_len <= len_p + 1), clone, state)
            tl.store(link_ptr + cur, link_cur)
            tl.store(tokens_ptr + pos, c)
            last = cur
            pos += 1
            tl.debug_barrier()
    # A slot with no new tokens is not written at all: another stream may be building it (an
    # admission's Drafter.prepare beside the decode steps, which reach the slot with num_new 0).
    moved = num_new > 0
    tl.store(num_states_ptr + b, num_states, mask=moved)
    tl.store(num_edges_ptr + b, num_edges, mask=moved)
    tl.store(last_ptr + b, last, mask=moved)
    tl.store(text_len_ptr + b, pos, mask=moved)
    tl.store(match_state_ptr + b, state, mask=moved)
    tl.store(match_len_ptr + b, match_len, mask=moved)


@triton.jit(do_not_specialize=["stride_new_b", "capacity", "h_shift", "h_mask"])
def _sam_dynamic_extend_kernel(
    new_tokens_ptr,  # [B, K] int32, PAD_TOKEN past num_new
    num_new_ptr,  # [B] int32
    length_ptr,  # [R, 2C] int32 (in/out)
    link_ptr,  # [R, 2C] int32 (in/out)
    endpos_ptr,  # [R, 2C] int32 (in/out)
    first_edge_ptr,  # [R, 2C] int32 (in/out)
    edge_next_ptr,  # [R, 3C] int32 (in/out)
    edge_slot_ptr,  # [R, 3C] int32 (in/out)
    hash_ptr,  # [R, H] int64 (in/out)
    tokens_ptr,  # [R, C] int32 (in/out)
    num_states_ptr,  # [R] int32 (in/out)
    num_edges_ptr,  # [R] int32 (in/out)
    last_ptr,  # [R] int32 (in/out)
    text_len_ptr,  # [R] int32 (in/out)
    match_state_ptr,  # [R] int32 (in/out)
    match_len_ptr,  # [R] int32 (in/out)
    stride_new_b,  # row stride of new_tokens
    capacity,  # C
    h_shift,  # 32 - log2(H)
    h_mask,  # H - 1
):
    """One program per sequence (slot b = row b); tokens consumed in order."""
    dynamic_extend_seq(
        tl.program_id(0).to(tl.int64),
        new_tokens_ptr,
        num_new_ptr,
        length_ptr,
        link_ptr,
        endpos_ptr,
        first_edge_ptr,
        edge_next_ptr,
        edge_slot_ptr,
        hash_ptr,
        tokens_ptr,
        num_states_ptr,
        num_edges_ptr,
        last_ptr,
        text_len_ptr,
        match_state_ptr,
        match_len_ptr,
        stride_new_b,
        capacity,
        h_shift,
        h_mask,
    )


def check_slots(slots, device: torch.device) -> int:
    """ValueError unless every slot array is contiguous int32 (hash: int64) on `device` at the
    shape the kernel addresses it with; returns R. The kernel finds row b of an array at
    b * (its width), the widths taken from C = tokens.shape[1] (2C states, 3C edges) and
    H = hash.shape[1]: an array of another width or with fewer rows would be written past its
    row or its end. H must be hash_size(C): a smaller table could fill up, and one of another size
    breaks the probe's `& (H - 1)`; either way a probe could go round for ever."""
    tokens = slots.tokens
    if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= MAX_CAPACITY:
        raise ValueError(
            f"slots.tokens must be [R, C] with 1 <= C <= {MAX_CAPACITY}, got {tuple(tokens.shape)}"
        )
    r, c = tokens.shape
    want = {"tokens": (r, c), "hash": (r, hash_size(c))}
    want |= dict.fromkeys(FIELDS_STATE, (r, 2 * c)) | dict.fromkeys(FIELDS_EDGE, (r, 3 * c))
    want |= dict.fromkeys(FIELDS_SLOT, (r,))
    context = f"tokens {tuple(tokens.shape)}: R={r} slots, C={c}"
    _sam_jit.check_automaton_arrays(slots, "slots", want, device, context)
    return r


def _check(slots, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    if new_tokens.ndim != 2 or new_tokens.dtype != torch.int32 or new_tokens.stride(1) != 1:
        raise ValueError(
            f"new_tokens must be [B, K] int32 with unit stride along K, got "
            f"{tuple(new_tokens.shape)} {new_tokens.dtype}"
        )
    b = new_tokens.shape[0]
    if num_new.shape != (b,) or num_new.dtype != torch.int32 or not num_new.is_contiguous():
        raise ValueError(
            f"num_new must be a contiguous [B] int32 tensor with B={b} (new_tokens "
            f"{tuple(new_tokens.shape)}), got {tuple(num_new.shape)} {num_new.dtype}"
        )
    max_reqs = check_slots(slots, new_tokens.device)
    if b > max_reqs:
        raise ValueError(f"batch of {b} sequences but only {max_reqs} dynamic automaton slots")
    if debug_checks():
        _sam_jit.debug_check_new_tokens(new_tokens, num_new)


def sam_dynamic_extend_triton(slots, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """For b < B: match then extend slot b's automaton with new_tokens[b, :num_new[b]], in place.

    `slots` has the [R, ...] int32 tensors named in FIELDS_STATE, FIELDS_EDGE, FIELDS_SLOT, plus
    `hash` [R, H] int64 and `tokens` [R, C] (e.g. `samgpu.automata.DynamicAutomata`). No sync.
    """
    _check(slots, new_tokens, num_new)
    num_reqs = new_tokens.shape[0]
    if num_reqs == 0:
        return
    capacity = slots.tokens.shape[1]
    hash_slots = slots.hash.shape[1]
    _sam_dynamic_extend_kernel[(num_reqs,)](
        new_tokens,
        num_new,
        *(getattr(slots, f) for f in FIELDS_STATE),
        *(getattr(slots, f) for f in FIELDS_EDGE),
        slots.hash,
        slots.tokens,
        *(getattr(slots, f) for f in FIELDS_SLOT),
        new_tokens.stride(0),
        capacity,
        32 - (hash_slots.bit_length() - 1),
        hash_slots - 1,
        num_warps=1,
    )


def sam_dynamic_extend_ref(slots, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """Loop-level reference of `sam_dynamic_extend_triton`: same arrays, same edge order, same hash
    slots, so every output array is bitwise identical.

    Memory traffic per token: one 8-byte probe (plus collisions) per state visited by the match
    and by the extension's suffix-link walk, 8 + 8 bytes stored per new edge, 16 per new state.
    """
    _check(slots, new_tokens, num_new)
    capacity = slots.tokens.shape[1]
    hash_slots = slots.hash.shape[1]
    shift = 32 - (hash_slots.bit_length() - 1)
    hmask = hash_slots - 1
    for b in range(new_tokens.shape[0]):
        row = {f: getattr(slots, f)[b].tolist() for f in FIELDS_STATE + FIELDS_EDGE}
        table = slots.hash[b].tolist()
        tokens = slots.tokens[b].tolist()
        length, link, endpos, first = (row[f] for f in FIELDS_STATE)
        enext, eslot = (row[f] for f in FIELDS_EDGE)
        meta = {f: int(getattr(slots, f)[b]) for f in FIELDS_SLOT}
        num_states, num_edges, last = meta["num_states"], meta["num_edges"], meta["last"]
        pos, state, match_len = meta["text_len"], meta["match_state"], meta["match_len"]

        def find(s: int, t: int, table=table) -> tuple[int, int]:
            """(slot, dst) of key (s, t), or (free slot ending the probe, NO_STATE)."""
            j = _hash_slot_py(s & 0xFFFFFFFF, t, shift)
            while table[j] != EMPTY:
                if table[j] >> FIELD_BITS == (s << FIELD_BITS) | t:
                    return j, table[j] & FIELD_MASK
                j = (j + 1) & hmask
            return j, NO_STATE

        def pack(src: int, t: int, dst: int) -> int:
            return (src << (2 * FIELD_BITS)) | (t << FIELD_BITS) | dst

        for i in range(int(num_new[b])):
            c = int(new_tokens[b, i]) & FIELD_MASK
            _, dst = find(state, c)
            while dst == NO_STATE and state != ROOT_STATE:
                state = link[state]
                match_len = length[state]
                _, dst = find(state, c)
            state, match_len = (dst, match_len + 1) if dst != NO_STATE else (ROOT_STATE, 0)
            if pos >= capacity:
                continue
            cur = num_states
            num_states += 1
            length[cur], endpos[cur], first[cur] = length[last] + 1, pos, NO_EDGE
            p = last
            j, q = find(p, c)
            while p != NO_STATE and q == NO_STATE:
                table[j] = pack(p, c, cur)
                eslot[num_edges], enext[num_edges] = j, first[p]
                first[p] = num_edges
                num_edges += 1
                p = link[p]
                j, q = find(p, c)
            link_cur = ROOT_STATE
            if p != NO_STATE:
                if length[p] + 1 == length[q]:
                    link_cur = q
                else:
                    clone = num_states
                    num_states += 1
                    length[clone], link[clone], endpos[clone] = length[p] + 1, link[q], endpos[q]
                    first[clone] = NO_EDGE
                    f = first[q]
                    while f != NO_EDGE:
                        entry = table[eslot[f]]
                        t, d = (entry >> FIELD_BITS) & FIELD_MASK, entry & FIELD_MASK
                        j2, _ = find(clone, t)
                        table[j2] = pack(clone, t, d)
                        eslot[num_edges], enext[num_edges] = j2, first[clone]
                        first[clone] = num_edges
                        num_edges += 1
                        f = enext[f]
                    while p != NO_STATE and q != NO_STATE:
                        table[j] = pack(p, c, clone)
                        p = link[p]
                        j, dst = find(p, c)
                        if dst != q:
                            break
                    link[q] = clone
                    link_cur = clone
            link[cur] = link_cur
            tokens[pos] = c
            last = cur
            pos += 1
            while state != ROOT_STATE and match_len <= length[link[state]]:
                state = link[state]

        dev = slots.length.device
        for f in FIELDS_STATE + FIELDS_EDGE:
            getattr(slots, f)[b] = torch.tensor(row[f], dtype=torch.int32, device=dev)
        slots.hash[b] = torch.tensor(table, dtype=torch.int64, device=dev)
        slots.tokens[b] = torch.tensor(tokens, dtype=torch.int32, device=dev)
        values = (num_states, num_edges, last, pos, state, match_len)
        for f, v in zip(FIELDS_SLOT, values, strict=True):
            getattr(slots, f)[b] = v


def sam_dynamic_extend(slots, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """Match-then-extend the dynamic automata in place (Triton on CUDA, the reference otherwise)."""
    if use_triton(new_tokens):
        sam_dynamic_extend_triton(slots, new_tokens, num_new)
    else:
        sam_dynamic_extend_ref(slots, new_tokens, num_new)


AOT_SPECS = [
    AotSpec(
        _sam_dynamic_extend_kernel,
        {
            "new_tokens_ptr": "*i32",
            "num_new_ptr": "*i32",
            **{f"{f}_ptr": "*i32" for f in FIELDS_STATE + FIELDS_EDGE},
            "hash_ptr": "*i64",
            "tokens_ptr": "*i32",
            **{f"{f}_ptr": "*i32" for f in FIELDS_SLOT},
            "stride_new_b": "i32",
            "capacity": "i32",
            "h_shift": "i32",
            "h_mask": "i32",
        },
        {},
        num_warps=1,
    )
]
