"""Fused residual add + RMSNorm equals transformers' LlamaRMSNorm applied to residual + x."""

import pytest
import torch

from samgpu.kernels.rms_norm import rms_norm, rms_norm_ref, rms_norm_triton

# The Triton interpreter rounds float32 -> bfloat16 by truncation (the GPU rounds to nearest even):
# on CPU bf16 results may differ from torch by one ulp per rounding, hence the wider tolerance.
CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 1e-2 if CUDA else 3e-2)]


def test_worked_example(device):
    """x = [3, 4], weight = [1, 2], eps = 0: mean(x^2) = 12.5 -> [3, 4] / 3.5355 * [1, 2]."""
    x = torch.tensor([[3.0, 4.0]], device=device)
    w = torch.tensor([1.0, 2.0], device=device)
    want = torch.tensor([[0.848528, 2.262742]], device=device)
    for impl in (rms_norm_triton, rms_norm_ref):
        out, h = impl(x, w, 0.0)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        assert h is x


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("hidden", [64, 576])
def test_matches_llama_rmsnorm_with_residual(dtype, tol, hidden, device):
    """Rows of a [2, 3, H] batch; H = 576 (SmolLM2) is not a power of two. The residual stream is
    updated in place to residual + x, rounded to the dtype exactly as torch's add."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, hidden, generator=g).to(device, dtype)
    res = torch.randn(2, 3, hidden, generator=g).to(device, dtype)
    norm = LlamaRMSNorm(hidden, eps=1e-5).to(device)
    norm.weight.data = (1 + torch.randn(hidden, generator=g)).to(device, dtype)
    with torch.no_grad():
        want_h = res + x
        want = norm(want_h)
    residual = res.clone()
    out, h = rms_norm_triton(x, norm.weight.data, 1e-5, residual=residual)
    assert h is residual
    if dtype == torch.bfloat16 and not CUDA:
        torch.testing.assert_close(residual, want_h, rtol=1e-2, atol=1e-2)
    else:
        assert torch.equal(residual, want_h)
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    ref_out, ref_h = rms_norm_ref(x, norm.weight.data, 1e-5, residual=res.clone())
    assert torch.equal(ref_out, want) and torch.equal(ref_h, want_h)


def test_out_buffers_and_dispatch(device):
    """On CUDA `rms_norm` dispatches to the kernel, on CPU to the reference."""
    x = torch.randn(4, 64, device=device)
    w = torch.randn(64, device=device)
    out = torch.empty(4, 64, device=device)
    res_out = torch.empty(4, 64, device=device)
    res = torch.randn(4, 64, device=device)
    got, h = rms_norm(x, w, 1e-6, residual=res, out=out, residual_out=res_out)
    assert got is out and h is res_out
    want, want_h = rms_norm_ref(x, w, 1e-6, residual=res.clone())
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(res_out, want_h)


def test_bad_shapes(device):
    x = torch.randn(4, 64, device=device)
    with pytest.raises(ValueError, match=r"weight must be \[H=64\]"):
        rms_norm_triton(x, torch.randn(32, device=device), 1e-6)
    with pytest.raises(ValueError, match="residual must be"):
        rms_norm_ref(
            x, torch.randn(64, device=device), 1e-6, residual=torch.randn(4, 32, device=device)
        )
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm_triton(x.t(), torch.randn(4, device=device), 1e-6)
