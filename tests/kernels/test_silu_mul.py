"""SwiGLU of the fused gate/up projection equals transformers' LlamaMLP activation."""

import pytest
import torch

from samgpu.kernels.silu_mul import silu_mul, silu_mul_ref, silu_mul_triton


def test_worked_example(device):
    """gate_up = [0, 2 | 5, 7] -> [silu(0) * 5, silu(2) * 7] = [0, 1.761594 * 7]."""
    gate_up = torch.tensor([[0.0, 2.0, 5.0, 7.0]], device=device)
    want = torch.tensor([[0.0, 12.331161]], device=device)
    for impl in (silu_mul_triton, silu_mul_ref):
        torch.testing.assert_close(impl(gate_up), want, rtol=1e-6, atol=1e-6)


# The Triton interpreter rounds float32 -> bfloat16 by truncation (the GPU to nearest even): one
# ulp per rounding on CPU.
BF16_TOL = 1e-2 if torch.cuda.is_available() else 3e-2


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, BF16_TOL)]
)
def test_matches_torch(dtype, tol, device):
    """I = 1536 (SmolLM2's MLP) spans two column blocks of 1024; rows of a [2, 3, 2I] batch."""
    x = (torch.randn(2, 3, 2 * 1536) * 4).to(device, dtype)
    gate, up = x.chunk(2, dim=-1)
    want = torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(silu_mul_triton(x), want, rtol=tol, atol=tol)
    assert torch.equal(silu_mul_ref(x), want)


def test_out_buffer_dispatch_and_bad_shapes(device):
    """On CUDA `silu_mul` dispatches to the kernel, on CPU to the reference."""
    x = torch.randn(3, 8, device=device)
    out = torch.empty(3, 4, device=device)
    assert silu_mul(x, out=out) is out
    torch.testing.assert_close(out, silu_mul_ref(x))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2 \* I\]"):
        silu_mul_triton(torch.randn(3, 7, device=device))
    with pytest.raises(ValueError, match="out must be"):
        silu_mul_triton(x, out=torch.empty(3, 8, device=device))
