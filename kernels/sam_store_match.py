"""Store matches: each sequence's match in each generation of the cross-request store
(kernels/sam_store.py has the layout, the append and the semantics), normalised then advanced over
its new tokens.

Rule per (sequence, generation), when the sequence has new tokens: first climb suffix links while
match_len <= length[link[state]] (the store grew since the last advance and a clone may have taken
the match's string), then per token c: climb while the state has no transition on c
(`match_len = length[state]` at each climb), take it and add 1, or fall to the root with 0 (the
store's root has no transition for a token the store never saw). Rows with num_new 0 are left as
they are.

Example: store text "1 2 3 SEP"; a sequence's match (root, 0) advanced over "7 1 2" gives
match_len 2 (the state of "1 2", endpos 1), from which a draft reads "3".

One program per (sequence, generation); num_warps = 1 (a scalar walk).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels import _sam_store_jit as J
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels._sam_store_jit import (  # noqa: F401 - re-exported for sam_update
    EMPTY,
    NUM_GENERATIONS,
    HostArrays,
    check_batch,
    find_py,
    scalars,
)
from samgpu.kernels.types import ROOT_STATE

INTS = ("capacity", "hash_slots", "h_shift", "h_mask", "t_bits", "s_bits")  # launch scalars


@triton.jit
def store_advance_seq(
    b,  # sequence index, int64
    g,  # generation, int64
    new_tokens_ptr,  # [B, K] int32, PAD_TOKEN past num_new
    num_new_ptr,  # [B] int32
    length_ptr,  # [G, 2C] int32
    link_ptr,  # [G, 2C] int32
    hash_ptr,  # [G, H] int64
    match_state_ptr,  # [G, R] int32 (in/out)
    match_len_ptr,  # [G, R] int32 (in/out)
    stride_new_b,  # row stride of new_tokens
    capacity,  # C
    hash_slots,  # H
    h_shift,
    h_mask,
    t_bits,
    s_bits,
    max_reqs,  # R
):
    """Normalise sequence b's match in generation g, then advance it over its new tokens (the body
    of the match kernel below, shared with the fused sam_update kernel)."""
    num_new = tl.load(num_new_ptr + b)
    if num_new > 0:
        s_mask = (tl.full([], 1, tl.int64) << s_bits.to(tl.int64)) - 1
        length_ptr += g * 2 * capacity.to(tl.int64)
        link_ptr += g * 2 * capacity.to(tl.int64)
        hash_ptr += g * hash_slots.to(tl.int64)
        m = g * max_reqs + b
        state = tl.load(match_state_ptr + m)
        match_len = tl.load(match_len_ptr + m)
        lk = tl.load(link_ptr + state, mask=state != J.C_ROOT, other=J.C_ROOT)
        lk_len = tl.load(length_ptr + lk)
        while (state != J.C_ROOT) & (match_len <= lk_len):  # a clone took the match's string
            state = lk
            lk = tl.load(link_ptr + state, mask=state != J.C_ROOT, other=J.C_ROOT)
            lk_len = tl.load(length_ptr + lk)
        for i in range(0, num_new):
            c = tl.load(new_tokens_ptr + b * stride_new_b + i)
            unused_slot, entry = J.store_probe(hash_ptr, state, c, t_bits, s_bits, h_shift, h_mask)
            while (entry == J.C_EMPTY) & (state != J.C_ROOT):
                state = lk
                match_len = lk_len
                lk = tl.load(link_ptr + state, mask=state != J.C_ROOT, other=J.C_ROOT)
                lk_len = tl.load(length_ptr + lk)
                unused_slot, entry = J.store_probe(
                    hash_ptr, state, c, t_bits, s_bits, h_shift, h_mask
                )
            state = tl.where(entry != J.C_EMPTY, (entry & s_mask).to(tl.int32), J.C_ROOT)
            match_len = tl.where(entry != J.C_EMPTY, match_len + 1, 0)
            lk = tl.load(link_ptr + state, mask=state != J.C_ROOT, other=J.C_ROOT)
            lk_len = tl.load(length_ptr + lk)
        tl.store(match_state_ptr + m, state)
        tl.store(match_len_ptr + m, match_len)


@triton.jit(
    do_not_specialize=[
        "num_reqs", "stride_new_b", "capacity", "hash_slots", "h_shift", "h_mask", "t_bits",
        "s_bits", "max_reqs",
    ]
)  # fmt: skip
def _sam_store_match_kernel(
    new_tokens_ptr,  # [B, K] int32, PAD_TOKEN past num_new
    num_new_ptr,  # [B] int32
    length_ptr,  # [G, 2C] int32
    link_ptr,  # [G, 2C] int32
    hash_ptr,  # [G, H] int64
    match_state_ptr,  # [G, R] int32 (in/out)
    match_len_ptr,  # [G, R] int32 (in/out)
    num_reqs,  # B
    stride_new_b,
    capacity,
    hash_slots,
    h_shift,
    h_mask,
    t_bits,
    s_bits,
    max_reqs,
):
    """One program per (sequence, generation): program g * B + b."""
    pid = tl.program_id(0).to(tl.int64)
    store_advance_seq(
        pid % num_reqs, pid // num_reqs, new_tokens_ptr, num_new_ptr, length_ptr, link_ptr,
        hash_ptr, match_state_ptr, match_len_ptr, stride_new_b, capacity, hash_slots, h_shift,
        h_mask, t_bits, s_bits, max_reqs,
    )  # fmt: skip


def sam_store_match_triton(store, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """Normalise, then advance every sequence's match in both generations over
    new_tokens[b, :num_new[b]] (rows with num_new 0 are left as they are). No sync."""
    check_batch(store, new_tokens, num_new)
    b = new_tokens.shape[0]
    if b == 0:
        return
    k = scalars(store)
    _sam_store_match_kernel[(b * NUM_GENERATIONS,)](
        new_tokens, num_new, store.length, store.link, store.hash, store.match_state,
        store.match_len, b, new_tokens.stride(0), k["capacity"], k["hash_slots"], k["h_shift"],
        k["h_mask"], k["t_bits"], k["s_bits"], k["max_reqs"], num_warps=1,
    )  # fmt: skip


def sam_store_match_ref(store, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """Loop-level reference of `sam_store_match_triton` (same in-place result).

    Memory traffic per token: one 8-byte probe per visited state, plus 1 link + 1 length per
    climb (int32, scattered)."""
    check_batch(store, new_tokens, num_new)
    h = HostArrays(store)
    a = h.a
    k = scalars(store)
    t_bits, s_bits, shift = k["t_bits"], k["s_bits"], k["h_shift"]
    s_mask = (1 << s_bits) - 1
    toks, counts = new_tokens.cpu().numpy(), num_new.tolist()
    for g in range(NUM_GENERATIONS):
        length, link, table = a["length"][g], a["link"][g], a["hash"][g]
        for b, n in enumerate(counts):
            if n <= 0:
                continue
            state, match_len = int(a["match_state"][g, b]), int(a["match_len"][g, b])
            while state != ROOT_STATE and match_len <= int(length[link[state]]):
                state = int(link[state])
            for i in range(n):
                c = int(toks[b, i])
                _, e = find_py(table, state, c, t_bits, s_bits, shift)
                while e == EMPTY and state != ROOT_STATE:
                    state = int(link[state])
                    match_len = int(length[state])
                    _, e = find_py(table, state, c, t_bits, s_bits, shift)
                state, match_len = (e & s_mask, match_len + 1) if e != EMPTY else (ROOT_STATE, 0)
            a["match_state"][g, b], a["match_len"][g, b] = state, match_len
    h.write_back()


def sam_store_match(store, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """Advance the store matches in place (Triton on CUDA, the reference otherwise)."""
    impl = sam_store_match_triton if use_triton(new_tokens) else sam_store_match_ref
    impl(store, new_tokens, num_new)


AOT_SPECS = [
    AotSpec(
        _sam_store_match_kernel,
        {
            "new_tokens_ptr": "*i32",
            "num_new_ptr": "*i32",
            "length_ptr": "*i32",
            "link_ptr": "*i32",
            "hash_ptr": "*i64",
            "match_state_ptr": "*i32",
            "match_len_ptr": "*i32",
            **{n: "i32" for n in ("num_reqs", "stride_new_b", *INTS, "max_reqs")},
        },
        num_warps=1,
    ),
]
