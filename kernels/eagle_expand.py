"""One depth of EAGLE-2's dynamic tree after the head scored the frontier's children, in one launch
(samgpu/drafters/parts/eagle_draft.py runs it once per depth; ~17 small torch launches before).

    eagle_expand(child_lp [B, k, k] f32, child_tok [B, k, k] i64, frontier, cands, base, slots,
                 lo, select)

For each row b, the frontier's k nodes (scores f, candidate ids c; node j's children are
child_*[b, j, :]):
  1. the k*k children join the candidates at columns base .. base + k*k: token, score
     f[j] + min(lp, 0) (log-probs are <= 0 up to rounding: a child never outscores its parent;
     NaN stays NaN), parent c[j];
  2. with `select`: the k best children (NaN ranks as -inf; ties to the lower column) become the
     next frontier (`frontier.scores_out`, `frontier.cand_out` = base + column) and the next head
     forward's inputs, in expansion slots lo + k .. lo + 2k (this frontier sits in lo .. lo + k):
     slot token = the child's token, hidden_in = the head output of its parent's slot, ancestor row
     = its parent slot's row plus itself.
Example (k 2): f [-0.1, -2.5], c [0, 1], child_lp [[-0.2, -1.0], [-0.1, -0.3]], child_tok
[[3, 4], [5, 6]], base 2 -> candidates 2..5: tokens [3, 4, 5, 6], scores [-0.3, -1.1, -2.6,
-2.8], parents [0, 0, 1, 1]; next frontier: scores [-0.3, -1.1], candidates [2, 3], slot tokens
[3, 4], both children of slot lo (hidden_in rows = hidden_out[lo]).
One program per row; the selection is k rounds of (max, lowest column) over the k*k scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton


@dataclass
class FrontierBuffers:
    """The frontier's scores and candidate ids, read (`*_in`) and written for the next depth
    (`*_out`): two buffers, swapped by the caller each depth."""

    scores_in: torch.Tensor  # [B, k] f32
    cand_in: torch.Tensor  # [B, k] i64
    scores_out: torch.Tensor  # [B, k] f32
    cand_out: torch.Tensor  # [B, k] i64


@dataclass
class CandidateColumns:
    tokens: torch.Tensor  # [B, C] i64
    scores: torch.Tensor  # [B, C] f32
    parents: torch.Tensor  # [B, C] i64


@dataclass
class ExpansionSlots:
    """The head's expansion inputs and outputs per slot (slot = a frontier node of some depth)."""

    tokens: torch.Tensor  # [B, T] i64
    hidden_in: torch.Tensor  # [B, T, H]
    hidden_out: torch.Tensor  # [B, >= T, H] same dtype
    ancestors: torch.Tensor  # [B, T, T] bool


@triton.jit(do_not_specialize=["base", "lo"])
def _eagle_expand_kernel(
    lp_ptr,  # [B, K*K] f32
    tok_ptr,  # [B, K*K] i64
    f_in_ptr,  # [B, K] f32
    c_in_ptr,  # [B, K] i64
    f_out_ptr,  # [B, K] f32
    c_out_ptr,  # [B, K] i64
    cand_tok_ptr,  # [B, C] i64
    cand_score_ptr,  # [B, C] f32
    cand_par_ptr,  # [B, C] i64
    slot_tok_ptr,  # [B, T] i64
    hid_in_ptr,  # [B, T, H]
    hid_out_ptr,  # [B, S, H]
    anc_ptr,  # [B, T, T] u8
    stride_cb,
    stride_sb,
    stride_hib,
    stride_hit,
    stride_hob,
    stride_hot,
    stride_ab,
    stride_at,
    base,
    lo,
    K: tl.constexpr,
    BLOCK_KK: tl.constexpr,  # next power of two >= K * K
    H: tl.constexpr,
    BLOCK_H: tl.constexpr,
    T: tl.constexpr,
    BLOCK_T: tl.constexpr,
    SELECT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_KK)
    ok = offs < K * K
    parent = offs // K
    lp = tl.load(lp_ptr + b * K * K + offs, mask=ok, other=0.0)
    tok = tl.load(tok_ptr + b * K * K + offs, mask=ok, other=0)
    f = tl.load(f_in_ptr + b * K + parent, mask=ok, other=0.0)
    c = tl.load(c_in_ptr + b * K + parent, mask=ok, other=0)
    score = f + tl.where(lp > 0.0, 0.0, lp)  # min(lp, 0) keeping NaN, as torch's clamp
    cols = b * stride_cb + base + offs
    tl.store(cand_tok_ptr + cols, tok, mask=ok)
    tl.store(cand_score_ptr + cols, score, mask=ok)
    tl.store(cand_par_ptr + cols, c, mask=ok)
    if SELECT:
        key = tl.where(score != score, float("-inf"), score)
        free = ok
        offs_h = tl.arange(0, BLOCK_H)
        offs_t = tl.arange(0, BLOCK_T)
        for i in tl.static_range(K):
            best = tl.max(tl.where(free, key, float("-inf")), axis=0)
            at = tl.min(tl.where(free & (key == best), offs, BLOCK_KK), axis=0)
            free = free & (offs != at)
            pick = offs == at
            # the picked score's bits (a float sum would turn -0.0 into 0.0)
            bits = tl.sum(tl.where(pick, score.to(tl.int32, bitcast=True), 0), axis=0)
            tl.store(f_out_ptr + b * K + i, bits.to(tl.float32, bitcast=True))
            tl.store(c_out_ptr + b * K + i, base + at.to(tl.int64))
            slot = lo + K + i
            tl.store(slot_tok_ptr + b * stride_sb + slot, tl.sum(tl.where(pick, tok, 0), axis=0))
            src = lo + at // K  # the parent's slot
            row = tl.load(hid_out_ptr + b * stride_hob + src * stride_hot + offs_h, mask=offs_h < H)
            tl.store(hid_in_ptr + b * stride_hib + slot * stride_hit + offs_h, row, mask=offs_h < H)
            arow = tl.load(anc_ptr + b * stride_ab + src * stride_at + offs_t, mask=offs_t < T)
            arow = tl.where(offs_t == slot, 1, arow).to(tl.uint8)
            tl.store(anc_ptr + b * stride_ab + slot * stride_at + offs_t, arow, mask=offs_t < T)


def _aot_specs() -> list[AotSpec]:
    specs = []
    for dtype in ("fp32", "bf16"):
        sig = {
            "lp_ptr": "*fp32",
            "tok_ptr": "*i64",
            "f_in_ptr": "*fp32",
            "c_in_ptr": "*i64",
            "f_out_ptr": "*fp32",
            "c_out_ptr": "*i64",
            "cand_tok_ptr": "*i64",
            "cand_score_ptr": "*fp32",
            "cand_par_ptr": "*i64",
            "slot_tok_ptr": "*i64",
            "hid_in_ptr": f"*{dtype}",
            "hid_out_ptr": f"*{dtype}",
            "anc_ptr": "*u8",
        }
        sig |= dict.fromkeys(
            "stride_cb stride_sb stride_hib stride_hit stride_hob stride_hot stride_ab stride_at "
            "base lo".split(),
            "i32",
        )
        for k, select in ((8, True), (8, False), (2, True)):
            consts = {
                "K": k,
                "BLOCK_KK": triton.next_power_of_2(k * k),
                "H": 576,
                "BLOCK_H": 1024,
                "T": 5 * k,
                "BLOCK_T": triton.next_power_of_2(5 * k),
                "SELECT": select,
            }
            specs.append(AotSpec(_eagle_expand_kernel, sig | dict.fromkeys(consts, "constexpr"),
                                 consts))  # fmt: skip
    return specs


AOT_SPECS = _aot_specs()


def _expect(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype | None) -> None:
    if t.shape != shape or (dtype is not None and t.dtype != dtype):
        want = f"{shape} {dtype}" if dtype is not None else f"{shape}"
        raise ValueError(f"eagle_expand: {name} {tuple(t.shape)} {t.dtype} must be {want}")


def _check(child_lp, child_tok, front, cands, base, slots, lo, select):
    """The shapes the kernel assumes: B and k from child_lp [B, k, k], C from cands.tokens
    [B, C], T from slots.tokens [B, T], H from slots.hidden_in [B, T, H]. The kernel writes row b
    of every output at those widths (the frontier's k entries, slots up to lo + 2k, H hidden
    values, T ancestor bits), so a buffer with fewer rows, slots or columns would be written past
    its end. The selection's outputs are checked only with `select` (untouched otherwise)."""
    if child_lp.dim() != 3 or child_lp.shape[1] != child_lp.shape[2]:
        raise ValueError(f"eagle_expand: child_lp must be [B, k, k], got {tuple(child_lp.shape)}")
    B, k, _ = child_lp.shape
    if child_lp.dtype != torch.float32 or child_tok.dtype != torch.int64:
        raise ValueError("eagle_expand: child_lp float32 and child_tok int64")
    if child_tok.shape != child_lp.shape:
        raise ValueError("eagle_expand: child_tok and child_lp differ in shape")
    _expect("frontier scores_in", front.scores_in, (B, k), torch.float32)
    _expect("frontier cand_in", front.cand_in, (B, k), torch.int64)
    if cands.tokens.dim() != 2:
        raise ValueError(
            f"eagle_expand: candidate tokens must be [B, C], got {tuple(cands.tokens.shape)}"
        )
    C = cands.tokens.shape[1]
    if base < 0 or base + k * k > C:
        raise ValueError(f"eagle_expand: columns {base}..{base + k * k} outside the candidates")
    _expect("candidate tokens", cands.tokens, (B, C), torch.int64)
    _expect("candidate scores", cands.scores, (B, C), torch.float32)
    _expect("candidate parents", cands.parents, (B, C), torch.int64)
    if slots.tokens.dim() != 2:
        raise ValueError(
            f"eagle_expand: slot tokens must be [B, T], got {tuple(slots.tokens.shape)}"
        )
    T = slots.tokens.shape[1]
    if select and (lo < 0 or lo + 2 * k > T):
        raise ValueError(f"eagle_expand: slots {lo}..{lo + 2 * k} outside the {T} slots")
    if not select:  # the frontier's outputs and the slots are not touched
        return
    _expect("frontier scores_out", front.scores_out, (B, k), torch.float32)
    _expect("frontier cand_out", front.cand_out, (B, k), torch.int64)
    _expect("slot tokens", slots.tokens, (B, T), torch.int64)
    hid_in, hid_out = slots.hidden_in, slots.hidden_out
    if hid_in.dim() != 3:
        raise ValueError(f"eagle_expand: hidden_in must be [B, T, H], got {tuple(hid_in.shape)}")
    H = hid_in.shape[2]
    _expect("hidden_in", hid_in, (B, T, H), None)
    # hidden_out [B, >= T, H], hidden_in's dtype: rows lo .. lo + k (the frontier's) are copied
    out_ok = hid_out.dim() == 3 and hid_out.shape[1] >= T and hid_out.dtype == hid_in.dtype
    if not out_ok or hid_out.shape[0] != B or hid_out.shape[2] != H:
        raise ValueError(
            f"eagle_expand: hidden_out {tuple(hid_out.shape)} {hid_out.dtype} must be "
            f"[{B}, >= {T}, {H}] {hid_in.dtype}"
        )
    _expect("ancestors", slots.ancestors, (B, T, T), torch.bool)


def eagle_expand_ref(
    child_lp: torch.Tensor,
    child_tok: torch.Tensor,
    front: FrontierBuffers,
    cands: CandidateColumns,
    base: int,
    slots: ExpansionSlots,
    lo: int,
    select: bool,
) -> None:
    """The spec (module doc), in torch."""
    _check(child_lp, child_tok, front, cands, base, slots, lo, select)
    B, k, _ = child_lp.shape
    score = (front.scores_in[..., None] + child_lp.clamp(max=0.0)).flatten(1)
    tok = child_tok.flatten(1)
    top = base + k * k
    cands.tokens[:, base:top] = tok
    cands.scores[:, base:top] = score
    cands.parents[:, base:top] = front.cand_in[..., None].expand(B, k, k).flatten(1)
    if not select:
        return
    key = torch.where(score.isnan(), float("-inf"), score)
    at = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    front.scores_out.copy_(score.gather(1, at))
    front.cand_out.copy_(base + at)
    src = lo + at // k  # the parents' slots
    nlo, nhi = lo + k, lo + 2 * k
    slots.tokens[:, nlo:nhi] = tok.gather(1, at)
    H, T = slots.hidden_in.shape[2], slots.ancestors.shape[2]
    slots.hidden_in[:, nlo:nhi] = slots.hidden_out.gather(1, src[..., None].expand(B, k, H))
    rows = slots.ancestors.gather(1, src[..., None].expand(B, k, T))
    rows[:, :, nlo:nhi] |= torch.eye(k, dtype=torch.bool, device=rows.device)
    slots.ancestors[:, nlo:nhi] = rows


def eagle_expand_triton(
    child_lp: torch.Tensor,
    child_tok: torch.Tensor,
    front: FrontierBuffers,
    cands: CandidateColumns,
    base: int,
    slots: ExpansionSlots,
    lo: int,
    select: bool,
) -> None:
    _check(child_lp, child_tok, front, cands, base, slots, lo, select)
    B, k, _ = child_lp.shape
    if B == 0:
        return
    for name, t in (("child_lp", child_lp), ("child_tok", child_tok)):
        if not t.is_contiguous():
            raise ValueError(f"eagle_expand: {name} must be contiguous")
    for t in (front.scores_in, front.cand_in, front.scores_out, front.cand_out):
        if t.stride() != (k, 1):
            raise ValueError("eagle_expand: frontier buffers must be contiguous [B, k]")
    c = cands.tokens.stride(0)
    if any(t.stride() != (c, 1) for t in (cands.tokens, cands.scores, cands.parents)):
        raise ValueError("eagle_expand: candidate columns must share one row stride, unit columns")
    hid_in, hid_out, anc = slots.hidden_in, slots.hidden_out, slots.ancestors
    H, T = hid_in.shape[2], anc.shape[2]
    if hid_in.stride(2) != 1 or hid_out.stride(2) != 1 or anc.stride(2) != 1:
        raise ValueError("eagle_expand: slot buffers need unit stride on their last dimension")
    if slots.tokens.stride(1) != 1:
        raise ValueError("eagle_expand: slot tokens need unit column stride")
    _eagle_expand_kernel[(B,)](
        child_lp,
        child_tok,
        front.scores_in,
        front.cand_in,
        front.scores_out,
        front.cand_out,
        cands.tokens,
        cands.scores,
        cands.parents,
        slots.tokens,
        hid_in,
        hid_out,
        anc.view(torch.uint8),
        c,
        slots.tokens.stride(0),
        hid_in.stride(0),
        hid_in.stride(1),
        hid_out.stride(0),
        hid_out.stride(1),
        anc.stride(0),
        anc.stride(1),
        base,
        lo,
        K=k,
        BLOCK_KK=triton.next_power_of_2(k * k),
        H=H,
        BLOCK_H=triton.next_power_of_2(H),
        T=T,
        BLOCK_T=triton.next_power_of_2(T),
        SELECT=select,
    )


def eagle_expand(
    child_lp: torch.Tensor,
    child_tok: torch.Tensor,
    front: FrontierBuffers,
    cands: CandidateColumns,
    base: int,
    slots: ExpansionSlots,
    lo: int,
    select: bool,
) -> None:
    """Dispatch: Triton on CUDA tensors, the torch reference otherwise."""
    fn = eagle_expand_triton if use_triton(child_lp) else eagle_expand_ref
    fn(child_lp, child_tok, front, cands, base, slots, lo, select)


__all__ = [
    "CandidateColumns",
    "ExpansionSlots",
    "FrontierBuffers",
    "eagle_expand",
    "eagle_expand_ref",
    "eagle_expand_triton",
]
