"""RMSNorm with an optional fused residual add (Llama family), one launch instead of ~9.

    h   = x + residual                          (if given; rounded to x's dtype, as torch adds)
    out = weight * (h * rsqrt(mean(h^2) + eps))   statistics in fp32, the normalised value
                                                  rounded to x's dtype before the weight multiply
which is transformers' LlamaRMSNorm applied to `residual + x`. Returns `(out, h)`; `h` is the new
residual stream (written to `residual_out`, or to `residual` itself in place when that is omitted).
Shapes: x, residual [..., H] (rows flattened; the last dim contiguous), weight [H].

Example: x = [3, 4], weight = [1, 2], eps = 0 -> mean(h^2) = 12.5, out = [0.8485, 2.2627].

Kernel: one program per row, the whole row in one block (H <= 8192 covers every Llama up to 70B).
Memory traffic: (2 + 2 * has_residual) * H * bytes per row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton

MAX_HIDDEN: int = 8192


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [R, H]
    res_ptr,  # [R, H] residual in (read only when HAS_RESIDUAL)
    w_ptr,  # [H]
    out_ptr,  # [R, H] normalised (out)
    res_out_ptr,  # [R, H] x + residual (out, written only when HAS_RESIDUAL)
    stride_x,
    stride_r,
    stride_o,
    stride_ro,
    hidden,  # H
    eps,
    BLOCK_H: tl.constexpr,  # next power of two >= H
    HAS_RESIDUAL: tl.constexpr,
):
    """Grid (R,). Row statistics in fp32; roundings follow torch's ops in the input dtype."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    ok = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + offs, mask=ok, other=0.0)
        h = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(res_out_ptr + row * stride_ro + offs, h, mask=ok)
    else:
        h = x
    hf = h.to(tl.float32)
    var = tl.sum(hf * hf, axis=0) / hidden
    y = (hf * tl.rsqrt(var + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (y * w).to(out_ptr.dtype.element_ty), mask=ok)


def _aot_specs() -> list[AotSpec]:
    specs = []
    for dtype in ("fp32", "bf16", "fp16"):
        ptr = f"*{dtype}"
        sig = {"x_ptr": ptr, "res_ptr": ptr, "w_ptr": ptr, "out_ptr": ptr, "res_out_ptr": ptr}
        sig |= dict.fromkeys(["stride_x", "stride_r", "stride_o", "stride_ro", "hidden"], "i32")
        sig |= {"eps": "fp32", "BLOCK_H": "constexpr", "HAS_RESIDUAL": "constexpr"}
        for block in (1024, 4096):  # SmolLM2 (576), Llama-7B (4096)
            for has_res in (False, True):
                consts = {"BLOCK_H": block, "HAS_RESIDUAL": has_res}
                specs.append(AotSpec(_rms_norm_kernel, sig, consts))
    return specs


AOT_SPECS = _aot_specs()


def _rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    return t.reshape(-1, hidden)


def _validate(x, weight, residual, out, residual_out):
    hidden = x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"rms_norm: weight must be [H={hidden}], got {tuple(weight.shape)}")
    if hidden > MAX_HIDDEN:
        raise ValueError(f"rms_norm: hidden size {hidden} > {MAX_HIDDEN}")
    for name, t in (("residual", residual), ("out", out), ("residual_out", residual_out)):
        if t is not None and (t.shape != x.shape or t.dtype != x.dtype):
            raise ValueError(
                f"rms_norm: {name} must be {tuple(x.shape)} {x.dtype}, "
                f"got {tuple(t.shape)} {t.dtype}"
            )


def rms_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    _validate(x, weight, residual, out, residual_out)
    hidden = x.shape[-1]
    out = torch.empty_like(x) if out is None else out
    if residual is not None and residual_out is None:
        residual_out = residual
    for name, t in (("x", x), ("out", out), ("residual", residual), ("residual_out", residual_out)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"rms_norm: {name} must be contiguous, strides {t.stride()}")
    xr, outr = _rows(x, hidden), _rows(out, hidden)
    resr = xr if residual is None else _rows(residual, hidden)
    res_outr = outr if residual_out is None else _rows(residual_out, hidden)
    _rms_norm_kernel[(xr.shape[0],)](
        xr,
        resr,
        weight,
        outr,
        res_outr,
        xr.stride(0),
        resr.stride(0),
        outr.stride(0),
        res_outr.stride(0),
        hidden,
        eps,
        BLOCK_H=triton.next_power_of_2(hidden),
        HAS_RESIDUAL=residual is not None,
    )
    return out, (x if residual is None else residual_out)


def rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' LlamaRMSNorm on `residual + x`, op by op."""
    _validate(x, weight, residual, out, residual_out)
    h = x if residual is None else residual + x
    hf = h.to(torch.float32)
    normed = weight * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    if residual is not None:
        target = residual if residual_out is None else residual_out
        h = target.copy_(h)
    if out is not None:
        return out.copy_(normed), h
    return normed, h


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: Triton on CUDA tensors, the torch reference otherwise."""
    impl = rms_norm_triton if use_triton(x) else rms_norm_ref
    return impl(x, weight, eps, residual=residual, out=out, residual_out=residual_out)
