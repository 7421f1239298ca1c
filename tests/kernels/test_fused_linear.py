"""The fused projections (norm prologue, SwiGLU and residual epilogues) equal the unfused chain
rms_norm -> F.linear -> silu_mul / + residual, up to the GEMM's summation order."""

import pytest
import torch

from samgpu.kernels.fused_linear import (
    LinearConfig,
    fused_linear,
    fused_linear_ref,
    fused_linear_triton,
)

CUDA = torch.cuda.is_available()
# The interpreter's tl.dot does not take bfloat16 (numpy has none): bf16 on the GPU only.
DTYPES = [(torch.float32, 2e-5), (torch.float16, 4e-3)] + ([(torch.bfloat16, 3e-2)] if CUDA else [])
# rows x K x N: one row, a row block plus a ragged one, K and N not multiples of their blocks
SHAPES = [(1, 96, 40), (20, 200, 72), (70, 128, 64)]


def _inputs(rows, k, n, dtype, device, swiglu=False):
    x = torch.randn(rows, k, device=device).to(dtype)
    w = (torch.randn(2 * n if swiglu else n, k, device=device) / k**0.5).to(dtype)
    g = (1 + 0.2 * torch.randn(k, device=device)).to(dtype)
    bias = torch.randn(n, device=device).to(dtype)
    res = torch.randn(rows, n, device=device).to(dtype)
    return x, w, g, bias, res


def test_worked_example(device):
    """x = [3, 4], unit norm weight, eps 0 -> x' = [0.8485, 1.1314]; W = [1, 1] -> 1.9799; with
    residual 1 -> 2.9799."""
    x = torch.tensor([[3.0, 4.0]], device=device)
    w = torch.ones(1, 2, device=device)
    g = torch.ones(2, device=device)
    for impl in (fused_linear_triton, fused_linear_ref):
        got = impl(x, w, norm_weight=g, eps=0.0, residual=torch.ones(1, 1, device=device))
        torch.testing.assert_close(got, torch.tensor([[2.979899]], device=device))


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("rows, k, n", SHAPES)
@pytest.mark.parametrize("use", ["norm", "norm+bias", "residual", "bias+residual", "swiglu"])
def test_matches_unfused_chain(dtype, tol, rows, k, n, use, device):
    swiglu = use == "swiglu"
    x, w, g, bias, res = _inputs(rows, k, n, dtype, device, swiglu)
    kw = {
        "norm": dict(norm_weight=g),
        "norm+bias": dict(norm_weight=g, bias=bias),
        "residual": dict(residual=res),
        "bias+residual": dict(bias=bias, residual=res),
        "swiglu": dict(norm_weight=g, swiglu=True),
    }[use]
    want = fused_linear_ref(x, w, eps=1e-5, **kw)
    got = fused_linear_triton(x, w, eps=1e-5, **kw)
    assert got.shape == want.shape == (rows, n) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    # negative control: the same comparison fails when the norm weight or residual is dropped
    wrong = {k_: v for k_, v in kw.items() if k_ not in ("norm_weight", "residual")}
    if wrong != kw:
        bad = fused_linear_triton(x, w, eps=1e-5, **wrong)
        assert (bad.float() - want.float()).abs().max() > 10 * tol


@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_configs_and_in_place_residual(dtype, tol, device):
    """Every tile shape gives the chain's result; out=residual updates the stream in place (as the
    runner does), rows past a block boundary included."""
    x, w, g, bias, res = _inputs(37, 160, 48, dtype, device)
    want = fused_linear_ref(x, w, residual=res)
    for cfg in (LinearConfig(16, 16, 64, 4, 3), LinearConfig(64, 32, 128, 4, 2),
                LinearConfig(32, 64, 32, 2, 3)):  # fmt: skip
        h = res.clone()
        got = fused_linear_triton(x, w, residual=h, out=h, config=cfg)
        assert got is h
        torch.testing.assert_close(h.float(), want.float(), rtol=tol, atol=tol)


def test_leading_dims_dispatch_and_errors(device):
    """[B, T, K] inputs; `fused_linear` takes the kernel on CUDA, the chain on CPU; bad shapes,
    dtypes and layouts are refused with the argument named."""
    x = torch.randn(2, 3, 32, device=device)
    w = torch.randn(24, 32, device=device)
    g = torch.rand(32, device=device) + 0.5
    out = fused_linear(x, w, norm_weight=g, swiglu=True)
    assert out.shape == (2, 3, 12)
    torch.testing.assert_close(out, fused_linear_ref(x, w, norm_weight=g, swiglu=True))
    with pytest.raises(ValueError, match=r"x \[\.\.\., K\] and weight \[N, K\]"):
        fused_linear_triton(x, torch.randn(24, 31, device=device))
    with pytest.raises(ValueError, match="swiglu needs weight"):
        fused_linear_triton(x, torch.randn(23, 32, device=device), swiglu=True)
    with pytest.raises(ValueError, match="norm_weight must be"):
        fused_linear_triton(x, w, norm_weight=g[:16])
    with pytest.raises(ValueError, match="residual must be"):
        fused_linear_triton(x, w, residual=torch.randn(2, 3, 24, device=device).double())
    with pytest.raises(ValueError, match="must be contiguous"):
        fused_linear_triton(x.transpose(0, 1), w)
    assert fused_linear_triton(x[:0], w).shape == (0, 3, 24)
