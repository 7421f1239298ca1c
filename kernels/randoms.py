"""Randoms for sampling verification, drawn on the device with no host sync.

`draw_randoms(rng, uniforms, exponentials)` fills `uniforms [B, N]` with U[0, 1) and
`exponentials [B, V]` with Exp(1) from Philox keyed by (rng[0] seed, rng[1] step), then advances
the step: every CUDA-graph replay draws fresh numbers without a torch generator (which graphs
would have to register), and a seed reproduces a run. The reference (CPU) seeds a torch.Generator
from the same pair; its stream differs from Philox, so kernel and reference are compared through
their distributions, not bitwise. One program per BLOCK draws.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton


@triton.jit
def _randoms_draw_kernel(
    rng_ptr,  # [2] int64: seed, step counter
    uniforms_ptr,  # [B * N] float32 (out)
    exponentials_ptr,  # [B * V] float32 (out)
    num_uniforms,  # B * N
    num_exponentials,  # B * V
    BLOCK: tl.constexpr,
):
    """One program per BLOCK draws; Philox keyed by (seed, step), counter = draw index."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(rng_ptr)
    step = tl.load(rng_ptr + 1)
    key = seed * 6364136223846793005 + step * 1442695040888963407 + 1
    r = tl.rand(key, offs)
    tl.store(uniforms_ptr + offs, r, mask=offs < num_uniforms)
    e = -tl.log(1.0 - r)  # r in [0, 1): Exp(1) >= 0
    off_e = offs - num_uniforms
    is_exp = (off_e >= 0) & (off_e < num_exponentials)
    tl.store(exponentials_ptr + off_e, e, mask=is_exp)


def _check_draw(rng, uniforms, exponentials):
    if rng.shape != (2,) or rng.dtype != torch.int64:
        raise ValueError(f"rng must be [2] int64 (seed, step), got {tuple(rng.shape)} {rng.dtype}")
    for name, t in (("uniforms", uniforms), ("exponentials", exponentials)):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous float32, got {t.dtype}")


def draw_randoms_triton(rng: torch.Tensor, uniforms: torch.Tensor, exponentials: torch.Tensor):
    """Fill uniforms with U[0, 1) and exponentials with Exp(1) from Philox keyed by
    (rng[0] seed, rng[1] step), then advance the step: graph-safe, no torch generator."""
    _check_draw(rng, uniforms, exponentials)
    total = uniforms.numel() + exponentials.numel()
    block = 1024
    _randoms_draw_kernel[(triton.cdiv(total, block),)](
        rng, uniforms, exponentials, uniforms.numel(), exponentials.numel(), BLOCK=block
    )
    rng[1:].add_(1)


def draw_randoms_ref(rng: torch.Tensor, uniforms: torch.Tensor, exponentials: torch.Tensor):
    """CPU counterpart: a torch.Generator seeded from (seed, step) (reads rng on the host: CPU
    tensors only, where that is no device sync). Not bitwise equal to the Philox stream."""
    _check_draw(rng, uniforms, exponentials)
    seed, step = rng.tolist()
    gen = torch.Generator(device=uniforms.device)
    gen.manual_seed((seed * 1_000_003 + step * 7_919 + 1) % (1 << 63))
    torch.rand(uniforms.shape, generator=gen, out=uniforms)
    exponentials.exponential_(generator=gen)
    rng[1:].add_(1)


def draw_randoms(rng: torch.Tensor, uniforms: torch.Tensor, exponentials: torch.Tensor):
    impl = draw_randoms_triton if use_triton(uniforms) else draw_randoms_ref
    impl(rng, uniforms, exponentials)


AOT_SPECS = [
    AotSpec(
        _randoms_draw_kernel,
        {
            "rng_ptr": "*i64",
            "uniforms_ptr": "*fp32",
            "exponentials_ptr": "*fp32",
            "num_uniforms": "i32",
            "num_exponentials": "i32",
            "BLOCK": "constexpr",
        },
        {"BLOCK": 1024},
    )
]
