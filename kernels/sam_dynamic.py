"""Dynamic suffix automaton per sequence, built and extended on the GPU, with its match advanced.

Each sequence owns one preallocated slot (row b of every array) holding the suffix automaton of its
committed text (prompt + emitted tokens), capacity C tokens fixed at construction:
- states (at most 2C): `length`, `link`, `endpos` (EARLIEST end position, 0-based; the root has -1),
  `first_edge` (head of the state's edge list) -- each [R, 2C] int32;
- edges (at most 3C transitions): `edge_src`, `edge_token`, `edge_dst`, `edge_next` (next edge of
  the same source state) -- each [R, 3C] int32. Edges are never deleted; a clone's redirect rewrites
  `edge_dst` in place;
- `hash [R, H]` int32: open addressing with linear probing over edge indices (-1 = free), keyed by
  (edge_src, edge_token) and compared through the edge arrays; H = next power of two >= 12C, so the
  load factor stays <= 1/4 (expected probes ~1.2 hit, ~1.4 miss). Lookup, insert and clone-copy are
  O(1) per transition;
- `tokens [R, C]` (the text, for drafts) and per slot `num_states`, `num_edges`, `last`, `text_len`,
  and the match `match_state`, `match_len` -- [R] int32.
Memory per slot: 2C*4*4 (states) + 3C*4*4 (edges) + 4H (hash, 48C..96C) + 4C (tokens)
= 132..180 bytes per token of capacity (e.g. C = 8192: 1.1-1.5 MB per sequence).

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

One program per sequence, sequential over its tokens (prefill: the whole prompt). num_warps = 1 and
a block barrier after every group of stores that the program reads back: a scalar store is done by
one thread while every thread loads, so without the barrier another thread could read a stale value.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels import _sam_jit as J
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import debug_checks, use_triton

NO_STATE: int = -1  # = samgpu.types.NO_STATE
NO_EDGE: int = -1  # free hash slot / end of an edge list
NO_POS: int = -1  # endpos of the root
ROOT: int = 0
_NO_STATE = tl.constexpr(NO_STATE)
_NO_EDGE = tl.constexpr(NO_EDGE)
_ROOT = tl.constexpr(ROOT)

FIELDS_STATE = ("length", "link", "endpos", "first_edge")  # [R, 2C]
FIELDS_EDGE = ("edge_src", "edge_token", "edge_dst", "edge_next")  # [R, 3C]
FIELDS_SLOT = ("num_states", "num_edges", "last", "text_len", "match_state", "match_len")  # [R]


def hash_size(capacity: int) -> int:
    """Slots of the transition table: a power of two >= 4 x the 3C transition bound."""
    return triton.next_power_of_2(max(16, 12 * capacity))


@triton.jit(do_not_specialize=["stride_new_b", "capacity", "h_shift", "h_mask"])
def _sam_dynamic_extend_kernel(
    new_tokens_ptr,  # [B, K] int32, PAD_TOKEN past num_new
    num_new_ptr,  # [B] int32
    length_ptr,  # [R, 2C] int32 (in/out)
    link_ptr,  # [R, 2C] int32 (in/out)
    endpos_ptr,  # [R, 2C] int32 (in/out)
    first_edge_ptr,  # [R, 2C] int32 (in/out)
    e_src_ptr,  # [R, 3C] int32 edge_src (in/out)
    e_tok_ptr,  # [R, 3C] int32 edge_token (in/out)
    e_dst_ptr,  # [R, 3C] int32 edge_dst (in/out)
    edge_next_ptr,  # [R, 3C] int32 (in/out)
    hash_ptr,  # [R, H] int32 (in/out)
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
    b = tl.program_id(0).to(tl.int64)
    cap = capacity.to(tl.int64)
    length_ptr += b * 2 * cap
    link_ptr += b * 2 * cap
    endpos_ptr += b * 2 * cap
    first_edge_ptr += b * 2 * cap
    e_src_ptr += b * 3 * cap
    e_tok_ptr += b * 3 * cap
    e_dst_ptr += b * 3 * cap
    edge_next_ptr += b * 3 * cap
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
        # 1. match in the automaton of the text before c
        _, e, d = J.hash_find(hash_ptr, e_src_ptr, e_tok_ptr, e_dst_ptr, state, c, h_shift, h_mask)
        while (e < 0) & (state != _ROOT):
            state = tl.load(link_ptr + state)
            match_len = tl.load(length_ptr + state)
            _, e, d = J.hash_find(
                hash_ptr, e_src_ptr, e_tok_ptr, e_dst_ptr, state, c, h_shift, h_mask
            )
        state = tl.where(e >= 0, d, _ROOT)
        match_len = tl.where(e >= 0, match_len + 1, 0)
        # 2. extend (frozen when full)
        if pos < capacity:
            cur = num_states
            num_states += 1
            tl.store(length_ptr + cur, tl.load(length_ptr + last) + 1)
            tl.store(endpos_ptr + cur, pos)
            tl.store(first_edge_ptr + cur, _NO_EDGE)
            p = last
            j, e, q = J.hash_find(hash_ptr, e_src_ptr, e_tok_ptr, e_dst_ptr, p, c, h_shift, h_mask)
            while (p != _NO_STATE) & (e < 0):
                tl.store(e_src_ptr + num_edges, p)
                tl.store(e_tok_ptr + num_edges, c)
                tl.store(e_dst_ptr + num_edges, cur)
                tl.store(edge_next_ptr + num_edges, tl.load(first_edge_ptr + p))
                tl.store(first_edge_ptr + p, num_edges)
                tl.store(hash_ptr + j, num_edges)
                num_edges += 1
                tl.debug_barrier()
                p = tl.load(link_ptr + p)
                j, e, q = J.hash_find(
                    hash_ptr, e_src_ptr, e_tok_ptr, e_dst_ptr, p, c, h_shift, h_mask
                )
            link_cur = tl.full([], _ROOT, tl.int32)
            if p != _NO_STATE:
                len_p = tl.load(length_ptr + p)
                if len_p + 1 == tl.load(length_ptr + q):
                    link_cur = q
                else:
                    clone = num_states
                    num_states += 1
                    tl.store(length_ptr + clone, len_p + 1)
                    tl.store(link_ptr + clone, tl.load(link_ptr + q))
                    tl.store(endpos_ptr + clone, tl.load(endpos_ptr + q))
                    tl.store(first_edge_ptr + clone, _NO_EDGE)
                    tl.debug_barrier()
                    # clone-copy q's edges (prepended: the clone's list is q's reversed)
                    f = tl.load(first_edge_ptr + q)
                    while f != _NO_EDGE:
                        t = tl.load(e_tok_ptr + f)
                        d = tl.load(e_dst_ptr + f)
                        j2, _, _ = J.hash_find(
                            hash_ptr, e_src_ptr, e_tok_ptr, e_dst_ptr, clone, t, h_shift, h_mask
                        )
                        tl.store(e_src_ptr + num_edges, clone)
                        tl.store(e_tok_ptr + num_edges, t)
                        tl.store(e_dst_ptr + num_edges, d)
                        tl.store(edge_next_ptr + num_edges, tl.load(first_edge_ptr + clone))
                        tl.store(first_edge_ptr + clone, num_edges)
                        tl.store(hash_ptr + j2, num_edges)
                        num_edges += 1
                        tl.debug_barrier()
                        f = tl.load(edge_next_ptr + f)
                    # redirect the c-edges of p and its suffix-link ancestors from q to the clone
                    while e >= 0:
                        tl.store(e_dst_ptr + e, clone)
                        tl.debug_barrier()
                        p = tl.load(link_ptr + p)
                        _, e, d = J.hash_find(
                            hash_ptr, e_src_ptr, e_tok_ptr, e_dst_ptr, p, c, h_shift, h_mask
                        )
                        e = tl.where(d == q, e, -1)
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
    tl.store(num_states_ptr + b, num_states)
    tl.store(num_edges_ptr + b, num_edges)
    tl.store(last_ptr + b, last)
    tl.store(text_len_ptr + b, pos)
    tl.store(match_state_ptr + b, state)
    tl.store(match_len_ptr + b, match_len)


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
    max_reqs = slots.length.shape[0]
    if b > max_reqs:
        raise ValueError(f"batch of {b} sequences but only {max_reqs} dynamic automaton slots")
    if new_tokens.device != slots.length.device:
        raise ValueError(
            f"new_tokens on {new_tokens.device} but the automata on {slots.length.device}"
        )
    if debug_checks():
        J.debug_check_new_tokens(new_tokens, num_new)


def sam_dynamic_extend_triton(slots, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """For b < B: match then extend slot b's automaton with new_tokens[b, :num_new[b]], in place.

    `slots` has the [R, ...] int32 tensors named in FIELDS_STATE, FIELDS_EDGE, FIELDS_SLOT plus
    `hash` and `tokens` (e.g. `samgpu.automata.DynamicAutomata`). No host sync.
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

    Memory traffic per token: ~3 hash probes (1 slot + 2 edge fields each) for the match and per
    suffix-link step of the extension, 4 int32 stores per new edge, 4 per new state.
    """
    _check(slots, new_tokens, num_new)
    capacity = slots.tokens.shape[1]
    hash_slots = slots.hash.shape[1]
    shift = 32 - (hash_slots.bit_length() - 1)
    hmask = hash_slots - 1
    for b in range(new_tokens.shape[0]):
        row = {f: getattr(slots, f)[b].tolist() for f in FIELDS_STATE + FIELDS_EDGE}
        hash_ = slots.hash[b].tolist()
        tokens = slots.tokens[b].tolist()
        length, link, endpos, first = (row[f] for f in FIELDS_STATE)
        esrc, etok, edst, enext = (row[f] for f in FIELDS_EDGE)
        meta = {f: int(getattr(slots, f)[b]) for f in FIELDS_SLOT}
        num_states, num_edges, last = meta["num_states"], meta["num_edges"], meta["last"]
        pos, state, match_len = meta["text_len"], meta["match_state"], meta["match_len"]

        def find(s: int, t: int, hash_=hash_, esrc=esrc, etok=etok) -> tuple[int, int]:
            """(slot, edge) as J.hash_find: linear probing from the home slot."""
            j = J.hash_slot_py(s, t, shift)
            while hash_[j] != NO_EDGE:
                e = hash_[j]
                if esrc[e] == s and etok[e] == t:
                    return j, e
                j = (j + 1) & hmask
            return j, NO_EDGE

        for i in range(int(num_new[b])):
            c = int(new_tokens[b, i])
            _, e = find(state, c)
            while e == NO_EDGE and state != ROOT:
                state = link[state]
                match_len = length[state]
                _, e = find(state, c)
            state, match_len = (edst[e], match_len + 1) if e != NO_EDGE else (ROOT, 0)
            if pos >= capacity:
                continue
            cur = num_states
            num_states += 1
            length[cur], endpos[cur], first[cur] = length[last] + 1, pos, NO_EDGE
            p = last
            j, e = find(p, c)
            while p != NO_STATE and e == NO_EDGE:
                esrc[num_edges], etok[num_edges], edst[num_edges] = p, c, cur
                enext[num_edges] = first[p]
                first[p] = num_edges
                hash_[j] = num_edges
                num_edges += 1
                p = link[p]
                j, e = find(p, c)
            link_cur = ROOT
            if p != NO_STATE:
                q = edst[e]
                if length[p] + 1 == length[q]:
                    link_cur = q
                else:
                    clone = num_states
                    num_states += 1
                    length[clone], link[clone], endpos[clone] = length[p] + 1, link[q], endpos[q]
                    first[clone] = NO_EDGE
                    f = first[q]
                    while f != NO_EDGE:
                        j2, _ = find(clone, etok[f])
                        esrc[num_edges], etok[num_edges], edst[num_edges] = clone, etok[f], edst[f]
                        enext[num_edges] = first[clone]
                        first[clone] = num_edges
                        hash_[j2] = num_edges
                        num_edges += 1
                        f = enext[f]
                    while e != NO_EDGE:
                        edst[e] = clone
                        p = link[p]
                        _, e = find(p, c)
                        if e != NO_EDGE and edst[e] != q:
                            e = NO_EDGE
                    link[q] = clone
                    link_cur = clone
            link[cur] = link_cur
            tokens[pos] = c
            last = cur
            pos += 1
            while state != ROOT and match_len <= length[link[state]]:
                state = link[state]

        dev = slots.length.device
        for f in FIELDS_STATE + FIELDS_EDGE:
            getattr(slots, f)[b] = torch.tensor(row[f], dtype=torch.int32, device=dev)
        slots.hash[b] = torch.tensor(hash_, dtype=torch.int32, device=dev)
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
            **{f"{f}_ptr": "*i32" for f in FIELDS_STATE},
            **{f"{f}_ptr": "*i32" for f in ("e_src", "e_tok", "e_dst", "edge_next")},
            "hash_ptr": "*i32",
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
