"""The decode step's projections with their neighbours fused in: the RMSNorm before a projection
(prologue), SwiGLU after the gate/up projection and the residual add after the o/down projections
(epilogues). A layer of a small model at decode batch sizes is launch-bound (each cuBLAS GEMM and
each norm or activation kernel costs its few microseconds however little it reads), so four
launches a layer instead of eight.

    y = x @ W^T (+ bias)                        x [R, K], W [N, K] (nn.Linear's layout)
    norm:     x -> rms_norm(x, norm_weight)       (kernels/rms_norm.py's roundings, no residual)
    swiglu:   W = [gate; up] [2I, K] -> y [R, I] = silu(x @ Wg^T) * (x @ Wu^T)  (silu_mul's)
    residual: y -> y + residual                   (rounded to the dtype first, as torch adds)

Every intermediate is rounded to the model dtype where the unfused chain rounds it (the
normalised x, the GEMM output, silu(gate)), so the only difference from rms_norm -> F.linear ->
silu_mul / add is the GEMM's fp32 summation order. That order depends on BLOCK_K and K only,
never on R: a row's result is the same in any batch (the config takes R only for its tile size).
fp32 inputs multiply in IEEE fp32 (no TF32), as F.linear does by default.

Example: x = [[3, 4]], norm_weight = [1, 1], eps = 0 -> x' = [0.8485, 1.1314]; W = [[1, 1]] ->
y = [[1.9799]]; with residual [[1]] -> [[2.9799]].

Kernel: one program per (BLOCK_M rows, BLOCK_N output columns); with norm, a first pass over the
rows' K columns (unrolled chunks, loads independent) for the statistics. Memory traffic: W once
per row block, x once per column block (from L2).
CPU path (`fused_linear_ref`): the unfused torch chain.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.rms_norm import rms_norm_ref
from samgpu.kernels.silu_mul import silu_mul_ref

NORM_CHUNK: int = 128  # columns per load of the norm's statistics pass


@triton.jit(do_not_specialize=["rows", "n_out"])
def _fused_linear_kernel(
    x_ptr,  # [R, K]
    w_ptr,  # [N, K] ([2N, K] with SWIGLU: gate rows, then up rows)
    bias_ptr,  # [N] (HAS_BIAS)
    norm_ptr,  # [K] RMSNorm weight (NORM)
    res_ptr,  # [R, N] residual (RESIDUAL; may be out itself)
    out_ptr,  # [R, N]
    rows,  # R
    n_out,  # N
    stride_x,
    stride_w,
    stride_r,
    stride_o,
    eps,
    K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NORM_CHUNK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr,
    SWIGLU: tl.constexpr,
    RESIDUAL: tl.constexpr,
):
    """Grid (cdiv(R, BLOCK_M), cdiv(N, BLOCK_N)). Column stride 1 everywhere."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < rows
    n_ok = offs_n < n_out
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_x
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_w
    dtype = x_ptr.dtype.element_ty

    if NORM:  # rms_norm's statistics: fp32 mean of squares over the row
        sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for c in tl.static_range(0, K, NORM_CHUNK):
            cols = c + tl.arange(0, NORM_CHUNK)
            xc = tl.load(
                x_rows + cols[None, :], mask=m_ok[:, None] & (cols < K)[None, :], other=0.0
            )
            xc = xc.to(tl.float32)
            sq += tl.sum(xc * xc, axis=1)
        rstd = tl.rsqrt(sq / K + eps)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_rows + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            g = tl.load(norm_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            y = (x.to(tl.float32) * rstd[:, None]).to(dtype).to(tl.float32)
            x = (y * g[None, :]).to(dtype)
        w_mask = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_rows + ks[None, :], mask=w_mask, other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        if SWIGLU:
            wu = tl.load(w_rows + n_out * stride_w + ks[None, :], mask=w_mask, other=0.0)
            acc_up = tl.dot(x, tl.trans(wu), acc_up, input_precision="ieee")

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = acc.to(dtype)
    if SWIGLU:
        g = y.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        y = (act * acc_up.to(dtype).to(tl.float32)).to(dtype)
    out_mask = m_ok[:, None] & n_ok[None, :]
    if RESIDUAL:
        r = tl.load(
            res_ptr + offs_m[:, None].to(tl.int64) * stride_r + offs_n[None, :],
            mask=out_mask,
            other=0.0,
        )
        y = (y.to(tl.float32) + r.to(tl.float32)).to(dtype)
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * stride_o + offs_n[None, :], y, mask=out_mask)


@dataclass(frozen=True)
class LinearConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def default_config(rows: int, n_out: int, k: int, swiglu: bool) -> LinearConfig:
    """Tiles for R rows: one row block up to 64 rows (the weights read once), narrow column blocks
    so that even a small projection spreads over many SMs (the kernel waits on memory latency,
    not on arithmetic)."""
    block_m = 16 if rows <= 16 else 64
    block_n = 32 if swiglu or n_out >= 2048 else 16
    return LinearConfig(block_m, block_n, 128 if k % 128 == 0 else 64, 4, 3)


def _validate(x, weight, bias, norm_weight, residual, swiglu, out):
    if x.dim() < 1 or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"fused_linear: x [..., K] and weight [N, K] expected, got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if swiglu and weight.shape[0] % 2:
        raise ValueError(f"fused_linear: swiglu needs weight [2I, K], got {tuple(weight.shape)}")
    n_out = weight.shape[0] // 2 if swiglu else weight.shape[0]
    shape = x.shape[:-1] + (n_out,)
    for name, t, want in (
        ("weight", weight, weight.shape),
        ("bias", bias, (n_out,)),
        ("norm_weight", norm_weight, (x.shape[-1],)),
        ("residual", residual, shape),
        ("out", out, shape),
    ):
        if t is None:
            continue
        if tuple(t.shape) != tuple(want) or t.dtype != x.dtype or t.device != x.device:
            raise ValueError(
                f"fused_linear: {name} must be {tuple(want)} {x.dtype} on {x.device}, got "
                f"{tuple(t.shape)} {t.dtype} on {t.device}"
            )
    if bias is not None and swiglu:
        raise ValueError("fused_linear: bias with swiglu is not supported")
    return shape


def fused_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: LinearConfig | None = None,
) -> torch.Tensor:
    shape = _validate(x, weight, bias, norm_weight, residual, swiglu, out)
    for name, t in (("x", x), ("weight", weight), ("residual", residual), ("out", out)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"fused_linear: {name} must be contiguous, strides {t.stride()}")
    out = torch.empty(shape, dtype=x.dtype, device=x.device) if out is None else out
    k, n_out = x.shape[-1], shape[-1]
    rows = x.numel() // k if k else 0
    if rows == 0 or n_out == 0:
        return out
    cfg = config or default_config(rows, n_out, k, swiglu)
    grid = (triton.cdiv(rows, cfg.block_m), triton.cdiv(n_out, cfg.block_n))
    res = out if residual is None else residual
    _fused_linear_kernel[grid](
        x,
        weight,
        weight if bias is None else bias,
        weight if norm_weight is None else norm_weight,
        res,
        out,
        rows,
        n_out,
        k,
        weight.stride(0),
        n_out,
        n_out,
        eps,
        K=k,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        NORM_CHUNK=min(NORM_CHUNK, triton.next_power_of_2(k)),
        HAS_BIAS=bias is not None,
        NORM=norm_weight is not None,
        SWIGLU=swiglu,
        RESIDUAL=residual is not None,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out


def fused_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: LinearConfig | None = None,
) -> torch.Tensor:
    """The unfused chain: rms_norm_ref, F.linear, silu_mul_ref, + residual (the runner's ops)."""
    _validate(x, weight, bias, norm_weight, residual, swiglu, out)
    if norm_weight is not None:
        x = rms_norm_ref(x, norm_weight, eps)[0]
    y = F.linear(x, weight, bias)
    if swiglu:
        y = silu_mul_ref(y)
    if residual is not None:
        y = residual + y
    return y if out is None else out.copy_(y)


def fused_linear(x: torch.Tensor, weight: torch.Tensor, **kwargs) -> torch.Tensor:
    """Dispatch: Triton on CUDA tensors, the torch chain otherwise."""
    impl = fused_linear_triton if use_triton(x) else fused_linear_ref
    return impl(x, weight, **kwargs)


def _aot_specs() -> list[AotSpec]:
    specs = []
    flags = ("HAS_BIAS", "NORM", "SWIGLU", "RESIDUAL")
    # the runner's four uses: norm (+bias) -> qkv, o (+bias) + residual, norm -> swiglu, + residual
    uses = [(b, True, False, False) for b in (False, True)]
    uses += [(b, False, False, True) for b in (False, True)]
    uses += [(False, True, True, False)]
    for dtype, (bm, bn), use in itertools.product(("fp32", "bf16"), ((16, 16), (64, 32)), uses):
        ptr = f"*{dtype}"
        sig = dict.fromkeys(["x_ptr", "w_ptr", "bias_ptr", "norm_ptr", "res_ptr", "out_ptr"], ptr)
        sig |= dict.fromkeys(
            ["rows", "n_out", "stride_x", "stride_w", "stride_r", "stride_o"], "i32"
        )
        sig |= {"eps": "fp32"}
        sig |= dict.fromkeys(
            ["K", "BLOCK_M", "BLOCK_N", "BLOCK_K", "NORM_CHUNK", *flags], "constexpr"
        )
        consts = {"K": 576, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "NORM_CHUNK": NORM_CHUNK}
        specs.append(
            AotSpec(_fused_linear_kernel, sig, consts | dict(zip(flags, use, strict=True)))
        )
    return specs


AOT_SPECS = _aot_specs()
