"""KV scatter of a packed prefill: the K/V of prompts prefilled back to back in one scratch row go
to their own slots, each prompt from column 0.

Packed prefill (samgpu/decoding/prefill.py) computes an admission's prompts as one row of `total`
tokens in a scratch cache; token j of that row belongs in slot slot[j] at column col[j] (its
position in its prompt). Layout: src_k, src_v [L, 1, H, W >= total, D] (the scratch row),
dst_k, dst_v [L, R, H, max_len, D] (the engine's cache), slot, col [>= total] int32; K and V of a
cache share strides, and so do K and V of the scratch; unit stride in D. One launch moves both K
and V of every layer: one program per (block of BLOCK_T tokens, layer x head).

Why not `dst[:, slot, :, col] = src[...]` (the reference): the advanced-index copy is two
launches of ~65 us each for 1,000 tokens of SmolLM2 on an H200 and ~75 us of host time apiece,
more than the rest of a one-prompt admission's copies; this kernel is bandwidth-bound.

Example: prompts of 3 and 2 tokens packed for slots 5 and 1: slot = [5, 5, 5, 1, 1],
col = [0, 1, 2, 0, 1]; scratch column 3 goes to slot 1, column 0.
Traffic: 2 (K, V) x 2 (read + write) x L x H x total x D x itemsize bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton

BLOCK_T = 32  # tokens per program


@triton.jit(do_not_specialize=["total"])
def _kv_scatter_kernel(
    src_k_ptr,  # [L, 1, H, W, D]
    src_v_ptr,  # [L, 1, H, W, D], same strides as src_k
    dst_k_ptr,  # [L, R, H, max_len, D] (out)
    dst_v_ptr,  # [L, R, H, max_len, D] (out), same strides as dst_k
    slot_ptr,  # [total] int32
    col_ptr,  # [total] int32
    total,
    num_heads,  # H
    head_dim,  # D
    src_stride_l,
    src_stride_h,
    src_stride_t,
    dst_stride_l,
    dst_stride_b,
    dst_stride_h,
    dst_stride_t,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    """Grid (cdiv(total, BLOCK_T), L * H)."""
    j = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    pid = tl.program_id(1)
    layer = (pid // num_heads).to(tl.int64)
    head = (pid % num_heads).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ok = j < total
    mask = ok[:, None] & (d < head_dim)[None, :]
    slot = tl.load(slot_ptr + j, mask=ok, other=0).to(tl.int64)
    col = tl.load(col_ptr + j, mask=ok, other=0).to(tl.int64)
    src = layer * src_stride_l + head * src_stride_h + j.to(tl.int64)[:, None] * src_stride_t
    dst = layer * dst_stride_l + head * dst_stride_h + slot * dst_stride_b + col * dst_stride_t
    src = src + d[None, :]
    dst = dst[:, None] + d[None, :]
    tl.store(dst_k_ptr + dst, tl.load(src_k_ptr + src, mask=mask), mask=mask)
    tl.store(dst_v_ptr + dst, tl.load(src_v_ptr + src, mask=mask), mask=mask)


def _check(src_k, src_v, dst_k, dst_v, slot, col, total: int) -> None:
    if src_k.dim() != 5 or src_k.shape[1] != 1 or dst_k.dim() != 5:
        raise ValueError(
            f"kv_scatter: src [L, 1, H, W, D] and dst [L, R, H, max_len, D], got "
            f"{tuple(src_k.shape)} and {tuple(dst_k.shape)}"
        )
    same = (src_k.shape[0], src_k.shape[2], src_k.shape[4])
    if same != (dst_k.shape[0], dst_k.shape[2], dst_k.shape[4]) or src_k.dtype != dst_k.dtype:
        raise ValueError(
            f"kv_scatter: src {tuple(src_k.shape)} {src_k.dtype} and dst {tuple(dst_k.shape)} "
            f"{dst_k.dtype} differ in layers, heads, head_dim or dtype"
        )
    if src_v.shape != src_k.shape or src_v.stride() != src_k.stride():
        raise ValueError("kv_scatter: src_v must have src_k's shape and strides")
    if dst_v.shape != dst_k.shape or dst_v.stride() != dst_k.stride():
        raise ValueError("kv_scatter: dst_v must have dst_k's shape and strides")
    if src_k.stride(4) != 1 or dst_k.stride(4) != 1:
        raise ValueError("kv_scatter: K/V need unit stride in head_dim")
    for name, x in (("slot", slot), ("col", col)):
        if x.dim() != 1 or x.shape[0] < total or x.dtype != torch.int32:
            raise ValueError(
                f"kv_scatter: {name} must be [>={total}] int32, got {x.shape} {x.dtype}"
            )
    if total > src_k.shape[3]:
        raise ValueError(f"kv_scatter: total={total} exceeds the scratch width {src_k.shape[3]}")


def kv_scatter_triton(src_k, src_v, dst_k, dst_v, slot, col, total: int) -> None:
    _check(src_k, src_v, dst_k, dst_v, slot, col, total)
    layers, _, heads, _, head_dim = src_k.shape
    if total == 0:
        return
    grid = (triton.cdiv(total, BLOCK_T), layers * heads)
    _kv_scatter_kernel[grid](
        src_k,
        src_v,
        dst_k,
        dst_v,
        slot,
        col,
        total,
        heads,
        head_dim,
        src_k.stride(0),
        src_k.stride(2),
        src_k.stride(3),
        dst_k.stride(0),
        dst_k.stride(1),
        dst_k.stride(2),
        dst_k.stride(3),
        BLOCK_T=BLOCK_T,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )


def kv_scatter_ref(src_k, src_v, dst_k, dst_v, slot, col, total: int) -> None:
    """Reference: one advanced-index copy per K and V (indexed shape [total, L, H, D])."""
    _check(src_k, src_v, dst_k, dst_v, slot, col, total)
    slot, col = slot[:total].long(), col[:total].long()
    dst_k[:, slot, :, col] = src_k[:, 0, :, :total].permute(2, 0, 1, 3)
    dst_v[:, slot, :, col] = src_v[:, 0, :, :total].permute(2, 0, 1, 3)


def kv_scatter(src_k, src_v, dst_k, dst_v, slot, col, total: int) -> None:
    impl = kv_scatter_triton if use_triton(dst_k) else kv_scatter_ref
    impl(src_k, src_v, dst_k, dst_v, slot, col, total)


_SIG = {
    "src_k_ptr": "*bf16",
    "src_v_ptr": "*bf16",
    "dst_k_ptr": "*bf16",
    "dst_v_ptr": "*bf16",
    "slot_ptr": "*i32",
    "col_ptr": "*i32",
    **dict.fromkeys(["total", "num_heads", "head_dim"], "i32"),
    **dict.fromkeys(
        "src_stride_l src_stride_h src_stride_t dst_stride_l dst_stride_b dst_stride_h "
        "dst_stride_t".split(),
        "i64",
    ),
    "BLOCK_T": "constexpr",
    "BLOCK_D": "constexpr",
}
AOT_SPECS = [
    AotSpec(
        _kv_scatter_kernel,
        {**_SIG, **dict.fromkeys(["src_k_ptr", "src_v_ptr", "dst_k_ptr", "dst_v_ptr"], dtype)},
        {"BLOCK_T": BLOCK_T, "BLOCK_D": d},
    )
    for dtype, d in [("*bf16", 64), ("*bf16", 128), ("*fp16", 64), ("*fp32", 64), ("*fp32", 128)]
]
