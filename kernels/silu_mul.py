"""SwiGLU activation of the fused gate/up projection: `out = silu(gate) * up`, one launch instead
of three (chunk-copy, silu, mul).

Input `gate_up [..., 2 * I]` (gate in the first half, up in the second, as the runner fuses
gate_proj and up_proj); output `[..., I]`. Roundings follow transformers' LlamaMLP in the model
dtype: silu(gate) rounded, then the product rounded.
Example: gate_up = [0, 2, 5, 7] (I = 2) -> silu([0, 2]) * [5, 7] = [0, 1.7616 * 7] = [0, 12.331].

Kernel: one program per (row, block of BLOCK columns). Memory traffic: 3 * I * bytes per row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton

BLOCK: int = 1024


@triton.jit
def _silu_mul_kernel(
    gate_up_ptr,  # [R, 2 * I] (rows contiguous)
    out_ptr,  # [R, I] (out, rows contiguous)
    inter,  # I
    BLOCK: tl.constexpr,
):
    """Grid (R, cdiv(I, BLOCK))."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < inter
    gate = tl.load(gate_up_ptr + row * 2 * inter + cols, mask=ok, other=0.0)
    up = tl.load(gate_up_ptr + row * 2 * inter + inter + cols, mask=ok, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * inter + cols, (act * up.to(tl.float32)).to(gate.dtype), mask=ok)


AOT_SPECS = [
    AotSpec(
        _silu_mul_kernel,
        {"gate_up_ptr": f"*{dt}", "out_ptr": f"*{dt}", "inter": "i32", "BLOCK": "constexpr"},
        {"BLOCK": BLOCK},
    )
    for dt in ("fp32", "bf16", "fp16")
]


def _validate(gate_up: torch.Tensor, out: torch.Tensor | None) -> torch.Size:
    if gate_up.dim() < 1 or gate_up.shape[-1] % 2:
        raise ValueError(f"silu_mul: gate_up must be [..., 2 * I], got {tuple(gate_up.shape)}")
    shape = gate_up.shape[:-1] + (gate_up.shape[-1] // 2,)
    if out is not None and (out.shape != shape or out.dtype != gate_up.dtype):
        raise ValueError(
            f"silu_mul: out must be {tuple(shape)} {gate_up.dtype}, "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    return shape


def silu_mul_triton(gate_up: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    shape = _validate(gate_up, out)
    if not gate_up.is_contiguous() or (out is not None and not out.is_contiguous()):
        raise ValueError("silu_mul: gate_up and out must be contiguous")
    out = torch.empty(shape, dtype=gate_up.dtype, device=gate_up.device) if out is None else out
    inter = shape[-1]
    rows = gate_up.numel() // (2 * inter) if inter else 0
    if rows:
        _silu_mul_kernel[(rows, triton.cdiv(inter, BLOCK))](gate_up, out, inter, BLOCK=BLOCK)
    return out


def silu_mul_ref(gate_up: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' LlamaMLP activation: act_fn(gate) * up in the model dtype."""
    _validate(gate_up, out)
    gate, up = gate_up.chunk(2, dim=-1)
    result = torch.nn.functional.silu(gate) * up
    return result if out is None else out.copy_(result)


def silu_mul(gate_up: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch: Triton on CUDA tensors, the torch reference otherwise."""
    impl = silu_mul_triton if use_triton(gate_up) else silu_mul_ref
    return impl(gate_up, out=out)
