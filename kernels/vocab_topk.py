"""The k most likely tokens of each row of logits, as log-probabilities: `log_softmax` + `topk`
over the vocabulary in two launches (an EAGLE head's draft step does this once per depth).

    logp, ids = vocab_topk(logits [R, V], k)    logp [R, k] float32 (descending), ids [R, k] int64
    == logits.float().log_softmax(-1).topk(k)   (ties may pick another index of the same value)

Why: at B=1 the torch pair costs ~55 us per call on an H200 (a softmax pass writing [R, V] fp32,
then a radix select of ~17 kernels, or one-block selects that are no faster), six times per EAGLE
step. Here:
  1. grid (R, S), S = cdiv(V, BLOCK): each program reads one block of a row once, keeps its max and
     sum of exp (for the row's log-sum-exp) and its k best (value, index) by k rounds of argmax;
  2. grid (R,): each row merges its S blocks: the log-sum-exp from the S (max, sum) pairs, the k
     best of the S * k candidates, minus the log-sum-exp.
Example: logits [0, ln 3] (V = 2), k = 1 -> logp [ln 0.75], id [1].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton

BLOCK: int = 2048  # vocabulary entries per program of the first pass
MAX_K: int = 64


@triton.jit
def _vocab_topk_block_kernel(
    x_ptr,  # [R, V] logits (any float dtype)
    vals_ptr,  # [R, S, K] fp32 out: each block's k best logits
    idx_ptr,  # [R, S, K] i32 out: their vocabulary ids
    m_ptr,  # [R, S] fp32 out: block max
    l_ptr,  # [R, S] fp32 out: block sum of exp(x - max)
    stride_x,
    V,
    S,
    K,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    cols = blk * BLOCK + offs
    ok = cols < V
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    total = tl.sum(tl.where(ok, tl.exp(x - m), 0.0), axis=0)
    out = (row * S + blk) * K
    tl.store(m_ptr + row * S + blk, m)
    tl.store(l_ptr + row * S + blk, total)
    for j in range(K):
        best, at = tl.max(x, axis=0, return_indices=True)  # one reduction for both
        tl.store(vals_ptr + out + j, best)
        tl.store(idx_ptr + out + j, tl.minimum(blk * BLOCK + at, V - 1))
        x = tl.where(offs == at, float("-inf"), x)


@triton.jit
def _vocab_topk_merge_kernel(
    vals_ptr,  # [R, S * K] fp32
    idx_ptr,  # [R, S * K] i32
    m_ptr,  # [R, S] fp32
    l_ptr,  # [R, S] fp32
    out_val_ptr,  # [R, K] fp32 out: log-probabilities, descending
    out_idx_ptr,  # [R, K] i64 out
    S,
    K,
    BLOCK_C: tl.constexpr,  # next power of two >= S * K
    BLOCK_S: tl.constexpr,  # next power of two >= S
):
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < S
    m = tl.load(m_ptr + row * S + s, mask=s_ok, other=float("-inf"))
    total = tl.load(l_ptr + row * S + s, mask=s_ok, other=0.0)
    top = tl.max(m, axis=0)
    lse = top + tl.log(tl.sum(total * tl.exp(m - top), axis=0))
    c = tl.arange(0, BLOCK_C)
    c_ok = c < S * K
    vals = tl.load(vals_ptr + row * S * K + c, mask=c_ok, other=float("-inf"))
    for j in range(K):
        best, at = tl.max(vals, axis=0, return_indices=True)
        tok = tl.load(idx_ptr + row * S * K + at)
        tl.store(out_val_ptr + row * K + j, best - lse)
        tl.store(out_idx_ptr + row * K + j, tok.to(tl.int64))
        vals = tl.where(c == at, float("-inf"), vals)


def _aot_specs() -> list[AotSpec]:
    specs = []
    for dtype in ("fp32", "bf16", "fp16"):
        sig = {"x_ptr": f"*{dtype}", "vals_ptr": "*fp32", "idx_ptr": "*i32", "m_ptr": "*fp32"}
        sig |= {"l_ptr": "*fp32", "stride_x": "i32", "V": "i32", "S": "i32", "K": "i32"}
        specs.append(
            AotSpec(_vocab_topk_block_kernel, sig | {"BLOCK": "constexpr"}, {"BLOCK": BLOCK})
        )
    sig = {"vals_ptr": "*fp32", "idx_ptr": "*i32", "m_ptr": "*fp32", "l_ptr": "*fp32"}
    sig |= {"out_val_ptr": "*fp32", "out_idx_ptr": "*i64", "S": "i32", "K": "i32"}
    sig |= {"BLOCK_C": "constexpr", "BLOCK_S": "constexpr"}
    for block_c, block_s in ((64, 16), (128, 16), (256, 32), (512, 32), (1024, 64)):
        consts = {"BLOCK_C": block_c, "BLOCK_S": block_s}
        specs.append(AotSpec(_vocab_topk_merge_kernel, sig, consts))
    return specs


AOT_SPECS = _aot_specs()


def _check(x: torch.Tensor, k: int) -> None:
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"vocab_topk: logits must be [R, V] float, got {tuple(x.shape)} {x.dtype}")
    if not 1 <= k <= min(MAX_K, x.shape[1]):
        raise ValueError(f"vocab_topk: k={k} must be in [1, min({MAX_K}, V={x.shape[1]})]")


def vocab_topk_triton(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, k)
    if x.stride(1) != 1:
        x = x.contiguous()
    R, V = x.shape
    block = min(BLOCK, triton.next_power_of_2(V))
    S = triton.cdiv(V, block)
    dev = x.device
    vals = torch.empty(R, S, k, dtype=torch.float32, device=dev)
    idx = torch.empty(R, S, k, dtype=torch.int32, device=dev)
    m = torch.empty(R, S, dtype=torch.float32, device=dev)
    l_sum = torch.empty(R, S, dtype=torch.float32, device=dev)
    out_val = torch.empty(R, k, dtype=torch.float32, device=dev)
    out_idx = torch.empty(R, k, dtype=torch.int64, device=dev)
    if R == 0:
        return out_val, out_idx
    _vocab_topk_block_kernel[(R, S)](x, vals, idx, m, l_sum, x.stride(0), V, S, k, BLOCK=block)
    _vocab_topk_merge_kernel[(R,)](
        vals,
        idx,
        m,
        l_sum,
        out_val,
        out_idx,
        S,
        k,
        BLOCK_C=max(16, triton.next_power_of_2(S * k)),
        BLOCK_S=max(16, triton.next_power_of_2(S)),
    )
    return out_val, out_idx


def vocab_topk_ref(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log_softmax in fp32, then topk."""
    _check(x, k)
    return x.float().log_softmax(dim=-1).topk(k, dim=-1)


def vocab_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: Triton on CUDA tensors, the torch reference otherwise."""
    return vocab_topk_triton(x, k) if use_triton(x) else vocab_topk_ref(x, k)


def vocab_top_ids(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ids alone, [R, k] int64, best first (Token Recycling's table update, every tree node
    of every row each step, where torch.topk's radix select cost ~230 us per step at B=16 on an
    H200): the same kernels on CUDA, `x.topk(k).indices` otherwise. Order: the raw logits' in
    fp32 (ties may pick another index of the same value)."""
    if use_triton(x):
        return vocab_topk_triton(x, k)[1]
    _check(x, k)
    return x.topk(k, dim=-1).indices


__all__ = ["vocab_top_ids", "vocab_topk", "vocab_topk_ref", "vocab_topk_triton"]
