"""Plans of exact attention (kernels/exact_attention.py): where each query's logical keys live, so
that the kernel reduces over them in logical order whichever form (a tree verify, a chain or a
prefill) brought the query. Built once per forward with fixed-shape torch ops (graph-safe, no host
sync) and shared by every layer.

Tree form: query i of sequence b sees logical positions 0 .. num_keys - 1; p < cache_len sits at
slot p, p >= cache_len at slot cache_len + ancestors[b, i, p - cache_len] (the ancestor of depth
p - cache_len, itself last). Chain / prefill form: every logical position p sits at slot p.
Example: cache_len 5, parents [-1, 0, 0, 2]: node 3 sees logical 0..7, slots 0..4 then 5, 7, 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExactPlan:
    """Where each query's logical keys live (module docstring). Computed once per forward and
    shared by all layers."""

    num_keys: torch.Tensor  # [B, N] int32: logical positions 0 .. num_keys - 1
    prefix_len: torch.Tensor  # [B, N] int32: logical p < prefix_len sits at slot p
    # [B, N, A] int32: logical p >= prefix_len sits at prefix_len + ancestors[.., p - prefix_len]
    ancestors: torch.Tensor


def exact_tree_plan(cache_len: torch.Tensor, tree_mask: torch.Tensor) -> ExactPlan:
    """Plan of the tree form from `cache_len [>=B] int32` and `tree_mask [B, N, N] bool` (rows in
    topological order). Fixed-shape torch ops only: graph-safe, no host sync."""
    b, n, _ = tree_mask.shape
    prefix = cache_len[:b].to(torch.int32)[:, None].expand(b, n).contiguous()
    num_keys = prefix + tree_mask.sum(-1, dtype=torch.int32)
    rank = tree_mask.to(torch.int32).cumsum(-1, dtype=torch.int32) - 1  # depth of ancestor j
    cols = torch.arange(n, dtype=torch.int32, device=tree_mask.device).expand(b, n, n)
    # Ancestor j goes to column rank(j); every non-ancestor to its own spare column n + j, so
    # the scatter has no duplicate index (deterministic, also under deterministic algorithms).
    index = torch.where(tree_mask, rank, cols + n).to(torch.int64)
    ancestors = torch.zeros(b, n, 2 * n, dtype=torch.int32, device=tree_mask.device)
    ancestors.scatter_(2, index, cols)
    return ExactPlan(num_keys, prefix, ancestors[:, :, :n])


def exact_chain_plan(start: torch.Tensor, lengths: torch.Tensor, num_tokens: int) -> ExactPlan:
    """Plan of the chain / prefill form: query t < lengths[b] sees slots 0 .. start[b] + t."""
    b = lengths.shape[0]
    t = torch.arange(num_tokens, dtype=torch.int32, device=lengths.device)
    num_keys = torch.where(
        t[None, :] < lengths[:, None], start[:b, None].to(torch.int32) + t[None, :] + 1, 0
    ).to(torch.int32)
    ancestors = torch.zeros(1, 1, 1, dtype=torch.int32, device=lengths.device)
    return ExactPlan(num_keys, num_keys, ancestors.expand(b, num_tokens, 1))
