"""The verify step's attention straight from a layer's fused QKV rows: RoPE of q and of the
nodes' k, their k and v written into the cache, and tree attention, in one launch of
kernels/tree_attention.py's kernel (its ROPE variant) instead of rope_kv's launch plus the
attention's: the runner's tree step (one kernel a layer fewer) uses it.

Semantics: `rope_kv(qkv, cos, sin, slot_start, k_cache, v_cache)` followed by
`tree_attention(q, k_cache, v_cache, cache_len, tree_mask)`. The cache writes and the rotated q
are rope_kv's bits (one rotation helper, `rope_kv.rope_rows`); the attention equals the unfused
kernel's bit for bit when that takes the tree in the same blocks of ROPE_TREE_BLOCK keys
(`block_n=16`), else up to the online softmax's rounding. The tree part attends to the nodes'
rotated k and v wherever cache_len puts the prefix's end (a dead row reads an empty prefix,
cache_len 0, while its nodes still go to slot_start + j). Requires cache_len <= slot_start (the
prefix a row reads ends before its nodes' slots; else the writes race with other programs'
prefix reads; checked under SAMGPU_DEBUG=1). CPU path: rope_kv_ref then tree_attention_ref.
"""

from __future__ import annotations

import torch

from samgpu.kernels._dispatch import debug_checks, use_triton
from samgpu.kernels.rope_kv import rope_kv_ref, validate_rope_inputs
from samgpu.kernels.tree_attention import check_inputs, launch, tree_attention_ref
from samgpu.kernels.visible_sdpa import RefPlan


def rope_tree_attention_triton(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_start: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    num_q_heads: int,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """`rope_kv` then `tree_attention_triton` in one launch (no rotated-q round trip, one kernel
    fewer per layer): qkv [B, N, (Hq + 2 Hkv) * D] and cos/sin [B, N, D / 2] as rope_kv takes
    them; the nodes' rotated k and v are written at slot_start[b] + j; attention reads the prefix
    [0, cache_len[b]) (at most slot_start[b]: below it for a dead row's empty prefix) and the
    tree from registers. Returns out [B, N, Hq, D] (module docstring: how it equals the two)."""
    b, n, hkv, d = validate_rope_inputs(qkv, cos, sin, slot_start, k_cache, v_cache, num_q_heads)
    q_view = qkv.unflatten(-1, (-1, d))[:, :, :num_q_heads]  # [B, N, Hq, D] for the checks
    check_inputs(q_view, k_cache, v_cache, cache_len, tree_mask)
    if debug_checks() and bool((cache_len[:b] > slot_start[:b]).any()):
        raise ValueError("rope_tree_attention: cache_len must not exceed slot_start")
    config = (block_m, block_n, num_splits, num_warps, num_stages)
    rope = (qkv, cos, sin, slot_start)
    return launch(
        q_view, rope, k_cache, v_cache, cache_len, tree_mask, out, num_q_heads, scale, config
    )


def rope_tree_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_start: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    num_q_heads: int,
    scale: float | None = None,
    plan: RefPlan | None = None,
) -> torch.Tensor:
    """A verify step's layer attention from its QKV rows: the fused kernel for CUDA tensors,
    `rope_kv_ref` then `tree_attention_ref` otherwise (`plan`: the step's step_plan)."""
    if use_triton(qkv):
        return rope_tree_attention_triton(
            qkv,
            cos,
            sin,
            slot_start,
            k_cache,
            v_cache,
            cache_len,
            tree_mask,
            num_q_heads=num_q_heads,
            scale=scale,
        )
    q = rope_kv_ref(qkv, cos, sin, slot_start, k_cache, v_cache, num_q_heads=num_q_heads)
    return tree_attention_ref(q, k_cache, v_cache, cache_len, tree_mask, scale=scale, plan=plan)
