"""Fused per-step automaton update: the static matches (sam_match) and the dynamic automata
(sam_dynamic: match then extend) advanced over the same accepted tokens in ONE launch.

The two walks are independent chains of dependent loads, so instead of running them one after the
other (two launches, latencies added) the grid has 2B programs: programs [0, B) extend the dynamic
automata, programs [B, 2B) advance the static matches, and both halves run side by side on
different SMs -- the step pays the longer of the two, not their sum. With only one automaton the
grid has B programs. The results are exactly those of `sam_dynamic_extend` then `sam_match`.

Example: accepted tokens "3 1 2" for a sequence whose text was "1 2 3 1 2 ... 9": one launch leaves
its dynamic automaton extended by the three tokens and both matches moved past them.

One program per (sequence, automaton); num_warps = 1 (scalar walks, see sam_dynamic.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels import sam_dynamic as D
from samgpu.kernels import sam_match as M
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton


@triton.jit(
    do_not_specialize=["num_reqs", "vocab_size", "stride_new_b", "capacity", "h_shift", "h_mask"]
)
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
    num_reqs,  # B
    vocab_size,  # V of the static automaton
    stride_new_b,  # row stride of new_tokens
    capacity,  # C
    h_shift,  # 32 - log2(H)
    h_mask,  # H - 1
    HAS_STATIC: tl.constexpr,
    HAS_DYNAMIC: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """Programs [0, B): dynamic slot b (if HAS_DYNAMIC); the next B: static match b."""
    pid = tl.program_id(0).to(tl.int64)
    static_b = pid - num_reqs if HAS_DYNAMIC else pid
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
        if static_b >= 0:
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


def _check(static, static_matches, dynamic, new_tokens, num_new) -> None:
    if static is None and dynamic is None:
        raise ValueError("sam_update needs a static automaton, a dynamic one or both")
    if (static is None) != (static_matches is None):
        raise ValueError("pass static and static_matches together")
    if static is not None:
        M._check(static, new_tokens, num_new, static_matches.state, static_matches.match_len)
    if dynamic is not None:
        D._check(dynamic, new_tokens, num_new)


def sam_update_triton(
    static, static_matches, dynamic, new_tokens: torch.Tensor, num_new: torch.Tensor
) -> None:
    """In one launch: `sam_dynamic_extend(dynamic, ...)` and `sam_match(static, ...)` over
    new_tokens[b, :num_new[b]]. `static`/`static_matches` or `dynamic` may be None. No sync."""
    _check(static, static_matches, dynamic, new_tokens, num_new)
    num_reqs = new_tokens.shape[0]
    if num_reqs == 0:
        return
    has_s, has_d = static is not None, dynamic is not None
    dummy = num_new
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
        d_args = [dummy] * 6 + [new_tokens.new_full((1,), -1, dtype=torch.int64)] + [dummy] * 7
        capacity, hash_slots = 1, 16
    _sam_update_kernel[(num_reqs * (int(has_s) + int(has_d)),)](
        new_tokens,
        num_new,
        *s_args,
        *d_args,
        num_reqs,
        static.root_next.shape[0] if has_s else 0,
        new_tokens.stride(0),
        capacity,
        32 - (hash_slots.bit_length() - 1),
        hash_slots - 1,
        HAS_STATIC=has_s,
        HAS_DYNAMIC=has_d,
        BLOCK_E=M.BLOCK_E,
        num_warps=1,
    )


def sam_update_ref(
    static, static_matches, dynamic, new_tokens: torch.Tensor, num_new: torch.Tensor
) -> None:
    """Reference: the two references one after the other (they touch disjoint state)."""
    _check(static, static_matches, dynamic, new_tokens, num_new)
    if dynamic is not None:
        D.sam_dynamic_extend_ref(dynamic, new_tokens, num_new)
    if static is not None:
        M.sam_match_ref(static, new_tokens, num_new, static_matches.state, static_matches.match_len)


def sam_update(
    static, static_matches, dynamic, new_tokens: torch.Tensor, num_new: torch.Tensor
) -> None:
    """Advance both automata over the accepted tokens (Triton on CUDA, the references otherwise)."""
    impl = sam_update_triton if use_triton(new_tokens) else sam_update_ref
    impl(static, static_matches, dynamic, new_tokens, num_new)


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
    **{n: "i32" for n in ("num_reqs", "vocab_size", "stride_new_b", "capacity", "h_shift")},
    "h_mask": "i32",
    "HAS_STATIC": "constexpr",
    "HAS_DYNAMIC": "constexpr",
    "BLOCK_E": "constexpr",
}
AOT_SPECS = [
    AotSpec(
        _sam_update_kernel,
        {**_SIG, "s_edge_token_ptr": edge_sig},
        {"HAS_STATIC": hs, "HAS_DYNAMIC": hd, "BLOCK_E": M.BLOCK_E},
        num_warps=1,
    )
    for hs, hd in ((True, True), (True, False), (False, True))
    for edge_sig in (("*i32", "*u16") if hs else ("*i32",))
]
