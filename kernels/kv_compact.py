"""KV compaction after verification: the accepted path's K/V move to contiguous cache positions.

The forward over a draft tree wrote node i's K/V at cache position cache_len[b] + i. After
verification the accepted path is accepted_nodes[b, 0..num_accepted[b]] (node 0 = root). For every
layer and head, node accepted_nodes[b, t] moves from cache_len[b] + accepted_nodes[b, t] to
cache_len[b] + t, for 1 <= t <= num_accepted[b] (the root at t = 0 stays where it is). Commit then
advances cache_len, and whatever lies beyond it is stale and overwritten by the next forward.

Layout: k_cache, v_cache [L, B, H, max_len, D] (any strides with unit stride in D; views of a
larger [L, max_reqs, ...] cache work), cache_len [B] int32, accepted_nodes [B, K] int32 NO_PARENT
padded, num_accepted [B] int32. All layers in one launch: one program per (layer, head, sequence),
moving both K and V.

In-place hazard: sources and destinations of one (layer, head, sequence) overlap (e.g. accepted
nodes [0, 2, 3]: t = 1 reads slot 2 while t = 2 writes slot 2). Each program gathers every source
row into registers first, then a block barrier, then scatters: all reads happen before any write.
Different programs own disjoint (layer, head, sequence) slices. Rows with accepted_nodes[b, t] == t
(always the case for chain drafts) are not moved at all.

Example: cache_len 5, accepted_nodes [0, 2, 3, -1], num_accepted 2: slot 7 -> 6, slot 8 -> 7.
Traffic: 2 (K, V) x 2 (read + write) x L x H x num_moved x D x itemsize bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton


@triton.jit
def _kv_compact_move_kernel(
    k_ptr,  # [L, B, H, max_len, D] (in/out)
    v_ptr,  # [L, B, H, max_len, D] (in/out), same strides as k
    cache_len_ptr,  # [B] int32
    accepted_ptr,  # [B, K] int32, NO_PARENT padded
    num_accepted_ptr,  # [B] int32
    num_heads,  # H
    head_dim,  # D
    stride_l,
    stride_b,
    stride_h,
    stride_s,
    K: tl.constexpr,
    BLOCK_K: tl.constexpr,  # next power of two >= K
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    """One program per (layer, head, sequence): gather all accepted rows, barrier, scatter."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    layer = (pid // num_heads).to(tl.int64)
    head = (pid % num_heads).to(tl.int64)
    num_acc = tl.load(num_accepted_ptr + b)
    base_len = tl.load(cache_len_ptr + b)
    t = tl.arange(0, BLOCK_K)
    d = tl.arange(0, BLOCK_D)
    in_path = (t >= 1) & (t <= num_acc) & (t < K)
    node = tl.load(accepted_ptr + b * K + t, mask=in_path, other=0)
    is_move = in_path & (node != t)
    src = (base_len + node).to(tl.int64)
    dst = (base_len + t).to(tl.int64)
    base = layer * stride_l + b.to(tl.int64) * stride_b + head * stride_h
    m2 = is_move[:, None] & (d[None, :] < head_dim)
    src_off = base + src[:, None] * stride_s + d[None, :]
    dst_off = base + dst[:, None] * stride_s + d[None, :]
    k_rows = tl.load(k_ptr + src_off, mask=m2)
    v_rows = tl.load(v_ptr + src_off, mask=m2)
    tl.debug_barrier()  # every source row is read before any destination row is written
    tl.store(k_ptr + dst_off, k_rows, mask=m2)
    tl.store(v_ptr + dst_off, v_rows, mask=m2)


def _check(k_cache, v_cache, cache_len, accepted_nodes, num_accepted) -> None:
    if k_cache.ndim != 5 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must be "
            "[L, B, H, max_len, D] with identical strides"
        )
    if k_cache.dtype != v_cache.dtype or k_cache.stride(4) != 1:
        raise ValueError("k_cache and v_cache need one dtype and unit stride in head_dim")
    num_reqs = k_cache.shape[1]
    if cache_len.shape != (num_reqs,) or cache_len.dtype != torch.int32:
        raise ValueError(f"cache_len {tuple(cache_len.shape)} must be [{num_reqs}] int32")
    if accepted_nodes.ndim != 2 or accepted_nodes.shape[0] != num_reqs:
        raise ValueError(
            f"accepted_nodes {tuple(accepted_nodes.shape)} must be [{num_reqs}, K] int32"
        )
    if accepted_nodes.dtype != torch.int32 or not accepted_nodes.is_contiguous():
        raise ValueError("accepted_nodes must be contiguous int32")
    if num_accepted.shape != (num_reqs,) or num_accepted.dtype != torch.int32:
        raise ValueError(f"num_accepted {tuple(num_accepted.shape)} must be [{num_reqs}] int32")


def kv_compact_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    accepted_nodes: torch.Tensor,
    num_accepted: torch.Tensor,
) -> None:
    _check(k_cache, v_cache, cache_len, accepted_nodes, num_accepted)
    num_layers, num_reqs, num_heads, _, head_dim = k_cache.shape
    k_slots = accepted_nodes.shape[1]
    if num_reqs == 0 or k_slots <= 1:
        return  # nothing can move (AR steps: K == 1)
    _kv_compact_move_kernel[(num_layers * num_heads, num_reqs)](
        k_cache,
        v_cache,
        cache_len,
        accepted_nodes,
        num_accepted,
        num_heads,
        head_dim,
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        k_cache.stride(3),
        K=k_slots,
        BLOCK_K=triton.next_power_of_2(k_slots),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )


def kv_compact_ref(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    accepted_nodes: torch.Tensor,
    num_accepted: torch.Tensor,
) -> None:
    """Reference: per sequence, t = 1..num_accepted in increasing order. A source slot is never
    written before it is read: accepted_nodes[t] >= t along a topological path, so src >= dst."""
    _check(k_cache, v_cache, cache_len, accepted_nodes, num_accepted)
    acc = accepted_nodes.tolist()
    for b, (base, n) in enumerate(zip(cache_len.tolist(), num_accepted.tolist(), strict=True)):
        for t in range(1, n + 1):
            src, dst = base + acc[b][t], base + t
            k_cache[:, b, :, dst] = k_cache[:, b, :, src]
            v_cache[:, b, :, dst] = v_cache[:, b, :, src]


def kv_compact(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    accepted_nodes: torch.Tensor,
    num_accepted: torch.Tensor,
) -> None:
    impl = kv_compact_triton if use_triton(k_cache) else kv_compact_ref
    impl(k_cache, v_cache, cache_len, accepted_nodes, num_accepted)


_SIG = {
    "k_ptr": "*bf16",
    "v_ptr": "*bf16",
    "cache_len_ptr": "*i32",
    "accepted_ptr": "*i32",
    "num_accepted_ptr": "*i32",
    "num_heads": "i32",
    "head_dim": "i32",
    "stride_l": "i64",
    "stride_b": "i64",
    "stride_h": "i64",
    "stride_s": "i64",
    "K": "constexpr",
    "BLOCK_K": "constexpr",
    "BLOCK_D": "constexpr",
}
AOT_SPECS = [
    AotSpec(
        _kv_compact_move_kernel,
        {**_SIG, "k_ptr": dtype, "v_ptr": dtype},
        {"K": k, "BLOCK_K": triton.next_power_of_2(k), "BLOCK_D": d},
    )
    for dtype, k, d in [
        ("*bf16", 4, 64),
        ("*bf16", 17, 128),
        ("*fp16", 9, 64),
        ("*fp32", 65, 64),
        ("*fp32", 2, 128),
    ]
]
