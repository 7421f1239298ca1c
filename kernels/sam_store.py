"""Cross-request store: ONE suffix automaton shared by every sequence, appended on the GPU with
finished responses (documents), in two generations for bounded memory; each sequence keeps a match
in each generation.

Layout (G = 2 generations of capacity C tokens each; row g of every array is generation g):
- states (< 2C per generation): `length`, `link`, `endpos` (EARLIEST end position), `first_edge`
  -- [G, 2C] int32; transitions (<= 3C) in `hash [G, H]` int64, open addressing with linear probing,
  H = next power of two >= 4C (load factor <= 3/4 in the worst case, ~1/2 on text, which has ~2
  transitions per token); an entry packs ((src << t_bits | token) << s_bits) | dst with
  t_bits = bit length of the vocabulary size V (the separator V fits) and s_bits = bit length of
  2C - 1, 2 s_bits + t_bits <= 63 (so entries are >= 0 and EMPTY = -1 never matches); edge lists
  for clone-copy `edge_next`, `edge_slot` [G, 3C] int32; the text `tokens [G, C]`;
- per generation [G] int32: `num_states`, `num_edges`, `last`, `text_len`, `num_docs`; `active [1]`
  (the generation being filled), `num_rotations [1]`;
- per sequence and generation: `match_state`, `match_len` [G, R] int32.
Memory: 2C*16 + 3C*8 + 8H + 4C bytes per generation = 92 bytes per token of capacity when C is a
power of two (H = 4C), up to 124 otherwise.

Documents: each appended document is followed by the separator SEP = V, a token no sequence has,
so no match spans two documents and a chain stops before it. A document longer than C - 1 tokens
keeps its first C - 1.

Eviction (two generations, oldest first): documents go into the active generation; when the next
one does not fit (text_len + n + 1 > C), the other generation -- the older one -- is emptied (its
hash table cleared, the matches of every sequence in it reset to the root) and becomes the active
one. So the store holds the last C to 2C tokens appended, and memory is fixed at construction.

Matches while the store grows. A live sequence's (state, match_len) in a generation that gains
documents stays sound: a state only gains transitions, keeps its earliest end position, and its
longest string. One thing changes: a clone made by an extension takes over the strings of length
<= length[clone] of the state it split, so a match string may now belong to an ancestor. Before
consuming tokens, the match advance therefore climbs while match_len <= length[link[state]]
(normalisation; the loads are those the first climb needs anyway); a draft reads only endpos,
equal for the split state and its clone, so it needs no normalisation. A match does not learn
longer matches that documents appended after its tokens would allow: each token extends it to
the longest suffix, no longer than the previous match plus one, that occurs in the store then.

Example: V = 5 (SEP = 5), C = 8; append doc "1 2 3": text "1 2 3 5" (4 tokens). A sequence
whose text ends in "1 2" has match_len 2 (endpos 1) and drafts "3". Appending "4 4 4 4" (5 with
SEP) does not fit (4 + 5 > 8): generation 1 is emptied and takes it; generation 0 stays queried.

Kernels: `_sam_store_append_kernel` (here), ONE program, documents in order (an automaton grows
one token at a time); O(1) amortised per token (expected ~0.8 us on an H200, as the dynamic
automaton's prefill; bench_store measures it); a rotation clears H entries in blocks of
CLEAR_BLOCK. num_warps = 1, with a block barrier after stores the program reads back (see
sam_dynamic.py). The matches: kernels/sam_store_match.py (one program per sequence and
generation; fused into sam_update); the chains: kernels/sam_draft.py; shared jit helpers:
kernels/_sam_store_jit.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels import _sam_store_jit as J
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import debug_checks, use_triton
from samgpu.kernels._sam_store_jit import (  # noqa: F401 - re-exported for the holders
    CLEAR_BLOCK,
    EMPTY,
    FIELDS_EDGE,
    FIELDS_GEN,
    FIELDS_STATE,
    NUM_GENERATIONS,
    HostArrays,
    find_py,
    hash_size,
    max_capacity,
    packing,
    scalars,
)
from samgpu.kernels.types import NO_EDGE, NO_POSITION, NO_STATE, ROOT_STATE


@triton.jit
def _extend(
    c, pos, num_states, num_edges, last,
    length_ptr, link_ptr, endpos_ptr, first_edge_ptr, edge_next_ptr, edge_slot_ptr, hash_ptr,
    tokens_ptr, t_bits, s_bits, h_shift, h_mask,
):  # fmt: skip
    """The classic online extension by token c at text position pos (clone-copy, redirect), on
    one generation's arrays; returns the new (num_states, num_edges, last)."""
    s_mask = (tl.full([], 1, tl.int64) << s_bits.to(tl.int64)) - 1
    t_mask = (tl.full([], 1, tl.int64) << t_bits.to(tl.int64)) - 1
    cur = num_states
    num_states += 1
    tl.store(length_ptr + cur, tl.load(length_ptr + last) + 1)
    tl.store(endpos_ptr + cur, pos)
    tl.store(first_edge_ptr + cur, J.C_NO_EDGE)
    p = last
    lp = tl.load(link_ptr + p)
    j, entry = J.store_probe(hash_ptr, p, c, t_bits, s_bits, h_shift, h_mask)
    while (p != J.C_NO_STATE) & (entry == J.C_EMPTY):
        tl.store(hash_ptr + j, J.pack(p, c, cur, t_bits, s_bits))
        tl.store(edge_slot_ptr + num_edges, j)
        tl.store(edge_next_ptr + num_edges, tl.load(first_edge_ptr + p))
        tl.store(first_edge_ptr + p, num_edges)
        num_edges += 1
        tl.debug_barrier()
        p = lp
        lp = tl.load(link_ptr + p, mask=p != J.C_NO_STATE, other=J.C_NO_STATE)
        j, entry = J.store_probe(hash_ptr, p, c, t_bits, s_bits, h_shift, h_mask)
    link_cur = tl.full([], J.C_ROOT, tl.int32)
    if p != J.C_NO_STATE:
        q = (entry & s_mask).to(tl.int32)
        len_p = tl.load(length_ptr + p)
        if len_p + 1 == tl.load(length_ptr + q):
            link_cur = q
        else:
            clone = num_states
            num_states += 1
            tl.store(length_ptr + clone, len_p + 1)
            tl.store(link_ptr + clone, tl.load(link_ptr + q))
            tl.store(endpos_ptr + clone, tl.load(endpos_ptr + q))
            head = tl.full([], J.C_NO_EDGE, tl.int32)
            f = tl.load(first_edge_ptr + q)
            while f != J.C_NO_EDGE:
                f_entry = tl.load(hash_ptr + tl.load(edge_slot_ptr + f))
                f_next = tl.load(edge_next_ptr + f)
                t = ((f_entry >> s_bits.to(tl.int64)) & t_mask).to(tl.int32)
                j2, unused_entry = J.store_probe(
                    hash_ptr, clone, t, t_bits, s_bits, h_shift, h_mask
                )
                tl.store(hash_ptr + j2, J.pack(clone, t, f_entry & s_mask, t_bits, s_bits))
                tl.store(edge_slot_ptr + num_edges, j2)
                tl.store(edge_next_ptr + num_edges, head)
                head = num_edges
                num_edges += 1
                tl.debug_barrier()
                f = f_next
            tl.store(first_edge_ptr + clone, head)
            redirect = entry != J.C_EMPTY
            while redirect:
                tl.store(hash_ptr + j, J.pack(p, c, clone, t_bits, s_bits))
                tl.debug_barrier()
                p = lp
                lp = tl.load(link_ptr + p, mask=p != J.C_NO_STATE, other=J.C_NO_STATE)
                j, entry = J.store_probe(hash_ptr, p, c, t_bits, s_bits, h_shift, h_mask)
                redirect = (p != J.C_NO_STATE) & (entry != J.C_EMPTY) & ((entry & s_mask) == q)
            tl.store(link_ptr + q, clone)
            link_cur = clone
    tl.store(link_ptr + cur, link_cur)
    tl.store(tokens_ptr + pos, c)
    tl.debug_barrier()
    return num_states, num_edges, cur


@triton.jit(
    do_not_specialize=[
        "num_docs_new", "stride_text", "capacity", "hash_slots", "h_shift", "h_mask", "t_bits",
        "s_bits", "sep", "max_reqs",
    ]
)  # fmt: skip
def _sam_store_append_kernel(
    text_ptr,  # [R_text, T] int32; document i = text[rows[i], starts[i]:ends[i]]
    rows_ptr,  # [n] int64
    starts_ptr,  # [n] int32
    ends_ptr,  # [n] int32
    length_ptr,  # [G, 2C] int32 (in/out)
    link_ptr,  # [G, 2C] int32 (in/out)
    endpos_ptr,  # [G, 2C] int32 (in/out)
    first_edge_ptr,  # [G, 2C] int32 (in/out)
    edge_next_ptr,  # [G, 3C] int32 (in/out)
    edge_slot_ptr,  # [G, 3C] int32 (in/out)
    hash_ptr,  # [G, H] int64 (in/out)
    tokens_ptr,  # [G, C] int32 (in/out)
    num_states_ptr,  # [G] int32 (in/out)
    num_edges_ptr,  # [G] int32 (in/out)
    last_ptr,  # [G] int32 (in/out)
    text_len_ptr,  # [G] int32 (in/out)
    num_docs_ptr,  # [G] int32 (in/out)
    active_ptr,  # [1] int32 (in/out)
    num_rotations_ptr,  # [1] int32 (in/out)
    match_state_ptr,  # [G, R] int32 (out: reset to the root in a generation that is emptied)
    match_len_ptr,  # [G, R] int32 (out)
    num_docs_new,  # n
    stride_text,  # row stride of text
    capacity,  # C
    hash_slots,  # H
    h_shift,  # 32 - log2(H)
    h_mask,  # H - 1
    t_bits,
    s_bits,
    sep,  # separator token (= V)
    max_reqs,  # R
    BLOCK: tl.constexpr,
):
    """One program: the documents in order, each then SEP, into the active generation."""
    offs = tl.arange(0, BLOCK)
    cap = capacity.to(tl.int64)
    act = tl.load(active_ptr)
    num_states = tl.load(num_states_ptr + act)
    num_edges = tl.load(num_edges_ptr + act)
    last = tl.load(last_ptr + act)
    pos = tl.load(text_len_ptr + act)
    docs = tl.load(num_docs_ptr + act)
    for i in range(0, num_docs_new):
        row = tl.load(rows_ptr + i)
        start = tl.load(starts_ptr + i)
        n = tl.minimum(tl.load(ends_ptr + i) - start, capacity - 1)
        if n > 0:
            if pos + n + 1 > capacity:  # rotate: empty the older generation, fill it next
                tl.store(num_states_ptr + act, num_states)
                tl.store(num_edges_ptr + act, num_edges)
                tl.store(last_ptr + act, last)
                tl.store(text_len_ptr + act, pos)
                tl.store(num_docs_ptr + act, docs)
                act = 1 - act
                h_row = hash_ptr + act.to(tl.int64) * hash_slots
                for k in range(0, hash_slots, BLOCK):
                    tl.store(h_row + k + offs, J.C_EMPTY, mask=k + offs < hash_slots)
                m_row = act.to(tl.int64) * max_reqs
                for k in range(0, max_reqs, BLOCK):
                    tl.store(match_state_ptr + m_row + k + offs, J.C_ROOT, mask=k + offs < max_reqs)
                    tl.store(match_len_ptr + m_row + k + offs, 0, mask=k + offs < max_reqs)
                s_row = act.to(tl.int64) * 2 * cap
                tl.store(length_ptr + s_row, 0)
                tl.store(link_ptr + s_row, J.C_NO_STATE)
                tl.store(endpos_ptr + s_row, J.C_NO_POSITION)
                tl.store(first_edge_ptr + s_row, J.C_NO_EDGE)
                tl.store(active_ptr, act)
                tl.store(num_rotations_ptr, tl.load(num_rotations_ptr) + 1)
                num_states = tl.full([], 1, tl.int32)
                num_edges = tl.full([], 0, tl.int32)
                last = tl.full([], J.C_ROOT, tl.int32)
                pos = tl.full([], 0, tl.int32)
                docs = tl.full([], 0, tl.int32)
                tl.debug_barrier()
            g = act.to(tl.int64)
            src = text_ptr + row * stride_text + start
            for k in range(0, n + 1):
                c = tl.load(src + k, mask=k < n, other=0)
                c = tl.where(k < n, c, sep)
                num_states, num_edges, last = _extend(
                    c, pos, num_states, num_edges, last,
                    length_ptr + g * 2 * cap, link_ptr + g * 2 * cap, endpos_ptr + g * 2 * cap,
                    first_edge_ptr + g * 2 * cap, edge_next_ptr + g * 3 * cap,
                    edge_slot_ptr + g * 3 * cap, hash_ptr + g * hash_slots, tokens_ptr + g * cap,
                    t_bits, s_bits, h_shift, h_mask,
                )  # fmt: skip
                pos += 1
            docs += 1
    tl.store(num_states_ptr + act, num_states)
    tl.store(num_edges_ptr + act, num_edges)
    tl.store(last_ptr + act, last)
    tl.store(text_len_ptr + act, pos)
    tl.store(num_docs_ptr + act, docs)


def _check_docs(store, text, rows, starts, ends) -> None:
    if text.ndim != 2 or text.dtype != torch.int32 or text.stride(1) != 1:
        raise ValueError(f"text must be [R, T] int32 with unit stride, got {tuple(text.shape)}")
    n = rows.shape[0]
    for name, t, dtype in (("rows", rows, torch.int64), ("starts", starts, torch.int32)):
        if t.shape != (n,) or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous [n={n}] {dtype} tensor, got {t.shape}")
    if ends.shape != (n,) or ends.dtype != torch.int32 or not ends.is_contiguous():
        raise ValueError(f"ends must be a contiguous [n={n}] int32 tensor, got {ends.shape}")
    J.check_arrays(store, text.device)
    if debug_checks():  # (syncs) a document read past its text row
        live = ends > starts
        outside = (rows < 0) | (rows >= text.shape[0]) | (starts < 0) | (ends > text.shape[1])
        if bool((live & outside).any()):
            raise ValueError(
                f"documents outside text {tuple(text.shape)}: rows {rows.tolist()}, "
                f"starts {starts.tolist()}, ends {ends.tolist()}"
            )


def sam_store_append_triton(store, text, rows, starts, ends) -> None:
    """Append documents text[rows[i], starts[i]:ends[i]] (each + SEP) in order, rotating the
    generations when one is full. `store`: samgpu.automata.StoreAutomaton-like. No sync."""
    _check_docs(store, text, rows, starts, ends)
    if rows.shape[0] == 0:
        return
    k = scalars(store)
    _sam_store_append_kernel[(1,)](
        text, rows, starts, ends,
        *(getattr(store, f) for f in FIELDS_STATE + FIELDS_EDGE), store.hash, store.tokens,
        *(getattr(store, f) for f in FIELDS_GEN), store.active, store.num_rotations,
        store.match_state, store.match_len,
        rows.shape[0], text.stride(0), k["capacity"], k["hash_slots"], k["h_shift"], k["h_mask"],
        k["t_bits"], k["s_bits"], store.vocab_size, k["max_reqs"],
        BLOCK=CLEAR_BLOCK, num_warps=1,
    )  # fmt: skip


def sam_store_append_ref(store, text, rows, starts, ends) -> None:
    """Loop-level reference of `sam_store_append_triton`: same arrays, same edge order, same hash
    slots, so every output array is bitwise identical.

    Memory traffic per token: one 8-byte probe (plus collisions) per state of the suffix-link walk,
    8 + 8 bytes stored per new edge, 16 per new state; a rotation writes 8H bytes."""
    _check_docs(store, text, rows, starts, ends)
    if rows.shape[0] == 0:
        return
    h = HostArrays(store)
    a = h.a
    k = scalars(store)
    cap, t_bits, s_bits, shift = k["capacity"], k["t_bits"], k["s_bits"], k["h_shift"]
    s_mask, t_mask = (1 << s_bits) - 1, (1 << t_bits) - 1
    text_h, rows_h = text.cpu().numpy(), rows.tolist()
    starts_h, ends_h = starts.tolist(), ends.tolist()

    def pack(src: int, t: int, dst: int) -> int:
        return (((src << t_bits) | t) << s_bits) | dst

    act = int(a["active"][0])
    for row, start, end in zip(rows_h, starts_h, ends_h, strict=True):
        n = min(end - start, cap - 1)
        if n <= 0:
            continue
        if int(a["text_len"][act]) + n + 1 > cap:
            act = 1 - act
            a["hash"][act].fill(EMPTY)
            a["match_state"][act].fill(ROOT_STATE)
            a["match_len"][act].fill(0)
            a["length"][act, 0], a["link"][act, 0] = 0, NO_STATE
            a["endpos"][act, 0], a["first_edge"][act, 0] = NO_POSITION, NO_EDGE
            for f, v in zip(FIELDS_GEN, (1, 0, ROOT_STATE, 0, 0), strict=True):
                a[f][act] = v
            a["active"][0] = act
            a["num_rotations"][0] += 1
        length, link, endpos, first = (a[f][act] for f in FIELDS_STATE)
        enext, eslot = a["edge_next"][act], a["edge_slot"][act]
        table, tokens = a["hash"][act], a["tokens"][act]
        num_states, num_edges = int(a["num_states"][act]), int(a["num_edges"][act])
        last, pos = int(a["last"][act]), int(a["text_len"][act])
        doc = [int(x) for x in text_h[row, start : start + n]] + [store.vocab_size]
        for c in doc:
            cur = num_states
            num_states += 1
            length[cur], endpos[cur], first[cur] = int(length[last]) + 1, pos, NO_EDGE
            p = last
            j, e = find_py(table, p, c, t_bits, s_bits, shift)
            while p != NO_STATE and e == EMPTY:
                table[j] = pack(p, c, cur)
                eslot[num_edges], enext[num_edges] = j, first[p]
                first[p] = num_edges
                num_edges += 1
                p = int(link[p])
                if p != NO_STATE:
                    j, e = find_py(table, p, c, t_bits, s_bits, shift)
            link_cur = ROOT_STATE
            if p != NO_STATE:
                q = e & s_mask
                if int(length[p]) + 1 == int(length[q]):
                    link_cur = q
                else:
                    clone = num_states
                    num_states += 1
                    length[clone], link[clone] = int(length[p]) + 1, link[q]
                    endpos[clone], first[clone] = endpos[q], NO_EDGE
                    f = int(first[q])
                    while f != NO_EDGE:
                        fe = int(table[eslot[f]])
                        t = (fe >> s_bits) & t_mask
                        j2, _ = find_py(table, clone, t, t_bits, s_bits, shift)
                        table[j2] = pack(clone, t, fe & s_mask)
                        eslot[num_edges], enext[num_edges] = j2, first[clone]
                        first[clone] = num_edges
                        num_edges += 1
                        f = int(enext[f])
                    while True:
                        table[j] = pack(p, c, clone)
                        p = int(link[p])
                        if p == NO_STATE:
                            break
                        j, e = find_py(table, p, c, t_bits, s_bits, shift)
                        if e == EMPTY or e & s_mask != q:
                            break
                    link[q] = clone
                    link_cur = clone
            link[cur] = link_cur
            tokens[pos] = c
            last = cur
            pos += 1
        values = (num_states, num_edges, last, pos, int(a["num_docs"][act]) + 1)
        for f, v in zip(FIELDS_GEN, values, strict=True):
            a[f][act] = v
    h.write_back()


def sam_store_append(store, text, rows, starts, ends) -> None:
    """Append documents to the store (Triton on CUDA, the reference otherwise)."""
    impl = sam_store_append_triton if use_triton(text) else sam_store_append_ref
    impl(store, text, rows, starts, ends)


_INTS = ("capacity", "hash_slots", "h_shift", "h_mask", "t_bits", "s_bits")
AOT_SPECS = [
    AotSpec(
        _sam_store_append_kernel,
        {
            "text_ptr": "*i32",
            "rows_ptr": "*i64",
            "starts_ptr": "*i32",
            "ends_ptr": "*i32",
            **{f"{f}_ptr": "*i32" for f in FIELDS_STATE + FIELDS_EDGE},
            "hash_ptr": "*i64",
            "tokens_ptr": "*i32",
            **{f"{f}_ptr": "*i32" for f in FIELDS_GEN},
            **{f"{f}_ptr": "*i32" for f in ("active", "num_rotations", "match_state", "match_len")},
            **{n: "i32" for n in ("num_docs_new", "stride_text", *_INTS, "sep", "max_reqs")},
            "BLOCK": "constexpr",
        },
        {"BLOCK": CLEAR_BLOCK},
        num_warps=1,
    ),
]
