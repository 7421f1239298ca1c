"""Fused per-step automaton update: the static matches (sam_match), the dynamic automata
(sam_dynamic: match then extend) and the store matches (sam_store_match, both generations)
advanced over the same accepted tokens in ONE launch.

The walks are independent chains of dependent loads, so instead of running them one after the
other (several launches, latencies added) the grid has one program per (sequence, walk): programs
[0, B) extend the dynamic automata, the next B advance the static matches, the next 2B the store
matches (generation 0, then 1), all side by side on different SMs -- the step pays the longest
walk, not their sum. Absent automata take no programs. The results are exactly those of
`sam_dynamic_extend`, `sam_match` and `sam_store_match`.

Example: accepted tokens "3 1 2" for a sequence whose text was "1 2 3 1 2 ... 9": one launch leaves
its dynamic automaton extended by the three tokens and both matches moved past them.

One program per (sequence, automaton); num_warps = 1 (scalar walks, see sam_dynamic.py).
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from samgpu.kernels import sam_dynamic as D
from samgpu.kernels import sam_match as M
from samgpu.kernels import sam_store_match as SM
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton


@triton.jit(
    do_not_specialize=[
        "num_reqs", "vocab_size", "stride_new_b", "capacity", "h_shift", "h_mask",
        "st_capacity", "st_hash_slots", "st_h_shift", "st_h_mask", "st_t_bits", "st_s_bits",
        "st_max_reqs",
    ]
)  # fmt: skip
def _sam_update_kernel(
    new_tokens_ptr,  # [B, K] int32, PAD_TOKEN past num_new
    num_new_ptr,  # [B] int32
    # static automaton (read when HAS_STATIC)
    s_edge_offsets_ptr,  # [S+1] int32
    s_edge_token_ptr,  # [E] int32 or uint16
    s_edge_dst_ptr,  # [E] int32
    s_length_ptr,  # [S] int32
    s_link_ptr,  # [S] int32
    s_root_next_ptr,  # [V] int32
    s_state_ptr,  # [B] int32 static match state (in/out)
    s_match_len_ptr,  # [B] int32 static match length (in/out)
    # dynamic automata (read when HAS_DYNAMIC)
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
    # store (read when HAS_STORE)
    st_length_ptr,  # [G, 2C'] int32
    st_link_ptr,  # [G, 2C'] int32
    st_hash_ptr,  # [G, H'] int64
    st_match_state_ptr,  # [G, R] int32 (in/out)
    st_match_len_ptr,  # [G, R] int32 (in/out)
    num_reqs,  # B
    vocab_size,  # V of the static automaton
    stride_new_b,  # row stride of new_tokens
    capacity,  # C
    h_shift,  # 32 - log2(H)
    h_mask,  # H - 1
    st_capacity,  # C' (store generation)
    st_hash_slots,  # H'
    st_h_shift,
    st_h_mask,
    st_t_bits,
    st_s_bits,
    st_max_reqs,  # R of the store's match rows
    HAS_STATIC: tl.constexpr,
    HAS_DYNAMIC: tl.constexpr,
    HAS_STORE: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """Programs [0, B): dynamic slot b (if HAS_DYNAMIC); the next B: static match b (if
    HAS_STATIC); the next 2B: store match (generation, b) (if HAS_STORE)."""
    pid = tl.program_id(0).to(tl.int64)
    static_b = pid - num_reqs if HAS_DYNAMIC else pid
    store_k = static_b - num_reqs if HAS_STATIC else static_b
    if HAS_DYNAMIC:
        if pid < num_reqs:
            D.dynamic_extend_seq(
                pid,
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
    if HAS_STATIC:
        if (static_b >= 0) & (static_b < num_reqs):
            M.static_advance_seq(
                static_b,
                s_edge_offsets_ptr,
                s_edge_token_ptr,
                s_edge_dst_ptr,
                s_length_ptr,
                s_link_ptr,
                s_root_next_ptr,
                new_tokens_ptr,
                num_new_ptr,
                s_state_ptr,
                s_match_len_ptr,
                vocab_size,
                stride_new_b,
                BLOCK_E,
            )
    if HAS_STORE:
        if store_k >= 0:
            SM.store_advance_seq(
                store_k % num_reqs,
                store_k // num_reqs,
                new_tokens_ptr,
                num_new_ptr,
                st_length_ptr,
                st_link_ptr,
                st_hash_ptr,
                st_match_state_ptr,
                st_match_len_ptr,
                stride_new_b,
                st_capacity,
                st_hash_slots,
                st_h_shift,
                st_h_mask,
                st_t_bits,
                st_s_bits,
                st_max_reqs,
            )


def _check(static, static_matches, dynamic, new_tokens, num_new, store=None) -> None:
    if static is None and dynamic is None and store is None:
        raise ValueError("sam_update needs a static automaton, a dynamic one, a store, or several")
    if (static is None) != (static_matches is None):
        raise ValueError("pass static and static_matches together")
    if static is not None:
        M._check(static, new_tokens, num_new, static_matches.state, static_matches.match_len)
    if dynamic is not None:
        D._check(dynamic, new_tokens, num_new)
    if store is not None:
        SM.check_batch(store, new_tokens, num_new)


def sam_update_triton(
    static,
    static_matches,
    dynamic,
    new_tokens: torch.Tensor,
    num_new: torch.Tensor,
    store=None,
) -> None:
    """In one launch: `sam_dynamic_extend(dynamic, ...)`, `sam_match(static, ...)` and
    `sam_store_match(store, ...)` over new_tokens[b, :num_new[b]]. Any of `static` (with
    `static_matches`), `dynamic`, `store` may be None. No sync."""
    _check(static, static_matches, dynamic, new_tokens, num_new, store)
    num_reqs = new_tokens.shape[0]
    if num_reqs == 0:
        return
    has_s, has_d, has_st = static is not None, dynamic is not None, store is not None
    dummy = num_new
    table_dummy = new_tokens.new_full((1,), -1, dtype=torch.int64)
    s_args = (
        [getattr(static, n) for n in ("edge_offsets", "edge_token", "edge_dst", "length", "link")]
        + [static.root_next, static_matches.state, static_matches.match_len]
        if has_s
        else [dummy] * 8
    )
    if has_d:
        d_args = [getattr(dynamic, f) for f in D.FIELDS_STATE + D.FIELDS_EDGE]
        d_args += [dynamic.hash, dynamic.tokens]
        d_args += [getattr(dynamic, f) for f in D.FIELDS_SLOT]
        capacity, hash_slots = dynamic.tokens.shape[1], dynamic.hash.shape[1]
    else:
        # (a 1-element int64 stand-in for the table: never read, but a real device pointer)
        d_args = [dummy] * 6 + [table_dummy] + [dummy] * 7
        capacity, hash_slots = 1, 16
    if has_st:
        st_args = [store.length, store.link, store.hash, store.match_state, store.match_len]
        k = SM.scalars(store)
        st_ints = [k[n] for n in (*SM.INTS, "max_reqs")]
    else:
        st_args = [dummy, dummy, table_dummy, dummy, dummy]
        st_ints = [1, 16, 28, 15, 1, 1, 1]
    num_walks = int(has_s) + int(has_d) + SM.NUM_GENERATIONS * int(has_st)
    _sam_update_kernel[(num_reqs * num_walks,)](
        new_tokens,
        num_new,
        *s_args,
        *d_args,
        *st_args,
        num_reqs,
        static.root_next.shape[0] if has_s else 0,
        new_tokens.stride(0),
        capacity,
        32 - (hash_slots.bit_length() - 1),
        hash_slots - 1,
        *st_ints,
        HAS_STATIC=has_s,
        HAS_DYNAMIC=has_d,
        HAS_STORE=has_st,
        BLOCK_E=M.BLOCK_E,
        num_warps=1,
    )


def sam_update_ref(
    static,
    static_matches,
    dynamic,
    new_tokens: torch.Tensor,
    num_new: torch.Tensor,
    store=None,
) -> None:
    """Reference: the references one after the other (they touch disjoint state)."""
    _check(static, static_matches, dynamic, new_tokens, num_new, store)
    if dynamic is not None:
        D.sam_dynamic_extend_ref(dynamic, new_tokens, num_new)
    if static is not None:
        M.sam_match_ref(static, new_tokens, num_new, static_matches.state, static_matches.match_len)
    if store is not None:
        SM.sam_store_match_ref(store, new_tokens, num_new)


def sam_update(
    static,
    static_matches,
    dynamic,
    new_tokens: torch.Tensor,
    num_new: torch.Tensor,
    store=None,
) -> None:
    """Advance the automata over the accepted tokens (Triton on CUDA, the references otherwise)."""
    impl = sam_update_triton if use_triton(new_tokens) else sam_update_ref
    impl(static, static_matches, dynamic, new_tokens, num_new, store)


_SIG = {
    "new_tokens_ptr": "*i32",
    "num_new_ptr": "*i32",
    **{
        f"s_{n}_ptr": "*i32"
        for n in (
            "edge_offsets",
            "edge_token",
            "edge_dst",
            "length",
            "link",
            "root_next",
            "state",
            "match_len",
        )
    },
    **{f"{f}_ptr": "*i32" for f in D.FIELDS_STATE + D.FIELDS_EDGE},
    "hash_ptr": "*i64",
    "tokens_ptr": "*i32",
    **{f"{f}_ptr": "*i32" for f in D.FIELDS_SLOT},
    "st_length_ptr": "*i32",
    "st_link_ptr": "*i32",
    "st_hash_ptr": "*i64",
    "st_match_state_ptr": "*i32",
    "st_match_len_ptr": "*i32",
    **{n: "i32" for n in ("num_reqs", "vocab_size", "stride_new_b", "capacity", "h_shift")},
    "h_mask": "i32",
    **{f"st_{n}": "i32" for n in (*SM.INTS, "max_reqs")},
    "HAS_STATIC": "constexpr",
    "HAS_DYNAMIC": "constexpr",
    "HAS_STORE": "constexpr",
    "BLOCK_E": "constexpr",
}
AOT_SPECS = [
    AotSpec(
        _sam_update_kernel,
        {**_SIG, "s_edge_token_ptr": edge_sig},
        {"HAS_STATIC": hs, "HAS_DYNAMIC": hd, "HAS_STORE": st, "BLOCK_E": M.BLOCK_E},
        num_warps=1,
    )
    for hs, hd, st in itertools.product((True, False), repeat=3)
    if hs or hd or st
    for edge_sig in (("*i32", "*u16") if hs else ("*i32",))
]
