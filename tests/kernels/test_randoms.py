"""draw_randoms: Philox uniforms and exponentials keyed by (seed, step), step advanced each call.
Kernel (interpreter on CPU) and reference are different streams: checked by their properties."""

import pytest
import torch

from samgpu.kernels.randoms import draw_randoms_ref, draw_randoms_triton

IMPLS = [pytest.param(draw_randoms_triton, id="triton"), pytest.param(draw_randoms_ref, id="ref")]


@pytest.mark.parametrize("impl", IMPLS)
def test_reproducible_fresh_and_distributed(impl, device):
    def draw(seed, step):
        rng = torch.tensor([seed, step], dtype=torch.int64, device=device)
        u = torch.empty(8, 64, device=device)
        e = torch.empty(4, 512, device=device)
        impl(rng, u, e)
        assert rng.tolist() == [seed, step + 1]  # the step advances: replays draw fresh numbers
        return u.cpu(), e.cpu()

    u1, e1 = draw(7, 0)
    u2, e2 = draw(7, 0)
    u3, _ = draw(7, 1)
    assert torch.equal(u1, u2) and torch.equal(e1, e2)  # same (seed, step): same numbers
    assert not torch.equal(u1, u3)  # next step: other numbers (negative control of the above)
    assert 0.0 <= float(u1.min()) and float(u1.max()) < 1.0
    assert abs(float(u1.mean()) - 0.5) < 0.05
    assert float(e1.min()) >= 0.0 and abs(float(e1.mean()) - 1.0) < 0.1


def test_bad_buffers_are_value_errors():
    rng = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="rng must be"):
        draw_randoms_ref(rng, torch.empty(2), torch.empty(2))
    with pytest.raises(ValueError, match="float32"):
        draw_randoms_ref(torch.zeros(2, dtype=torch.int64), torch.empty(2).double(), torch.empty(2))
