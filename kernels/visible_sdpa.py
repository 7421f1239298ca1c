"""The attention references' common core: SDPA of queries over the cache slots a visibility mask
lets them see. Tree attention (`tree_attention_ref`, the verify step) and prefill attention
(`prefill_attention_ref`) differ only in how they build the mask `visible [B, Q, L]` (Q queries,
L cache slots); both are the spec their Triton kernels are tested against and the CPU path.

`RefPlan` keeps what depends on the mask only, so a forward builds it once for all its layers:
the mask cut to the first W slots (the last slot some query sees + 1: the CPU path costs the
context, not the cache's capacity), which of them some query sees, and whether the zeroing below
is needed. Unseen slots may hold anything (NaN included, and 0 * NaN is NaN), so they are zeroed;
a query that sees nothing outputs zeros, as the kernels write (SDPA gives NaN there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RefPlan:
    visible: torch.Tensor  # [B, Q, W] bool
    used: torch.Tensor  # [B, 1, W, 1]: some query of the row sees the slot
    all_used: bool
    all_rows_see: bool


def plan_from_visible(visible: torch.Tensor) -> RefPlan:
    """The RefPlan of a `[B, Q, L] bool` mask (host reads: the references run on CPU tensors, and
    in tests)."""
    seen = visible.flatten(0, 1).any(0)
    width = int(seen.nonzero().max()) + 1 if bool(seen.any()) else 1
    visible = visible[..., :width]
    used = visible.any(1)[:, None, :, None]
    return RefPlan(visible, used, bool(used.all()), bool(visible.any(-1).all()))


def visible_sdpa(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: RefPlan,
    *,
    scale: float | None,
    upcast: bool,
) -> torch.Tensor:
    """q `[B, Q, Hq, D]` over the slots `plan` lets it see of `k_cache, v_cache [B', Hkv, L, D]`
    (GQA when Hkv < Hq); `[B, Q, Hq, D]` in q's dtype, computed in float32 when `upcast`."""
    b, width = q.shape[0], plan.visible.shape[-1]
    dtype = torch.float32 if upcast else q.dtype
    qh = q.transpose(1, 2).to(dtype)  # [B, Hq, Q, D]
    kh, vh = k_cache[:b, :, :width].to(dtype), v_cache[:b, :, :width].to(dtype)
    if not plan.all_used:
        kh, vh = torch.where(plan.used, kh, 0.0), torch.where(plan.used, vh, 0.0)
    gqa = q.shape[2] != kh.shape[1]
    attn = torch.nn.functional.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=plan.visible[:, None], scale=scale, enable_gqa=gqa
    )
    if not plan.all_rows_see:
        attn = torch.where(plan.visible.any(-1)[:, None, :, None], attn, 0.0)
    return attn.transpose(1, 2).to(q.dtype)
