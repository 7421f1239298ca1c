"""kv_scatter: token j of a packed scratch row goes to cache slot slot[j], column col[j], for every
layer and head, K and V; nothing else of the cache changes. The kernel (the Triton interpreter on
CPU) equals the advanced-index reference exactly, and the reference equals a per-token loop."""

import pytest
import torch

from samgpu.kernels.kv_scatter import kv_scatter, kv_scatter_ref, kv_scatter_triton

L, H, D = 3, 2, 24


def case(sizes, slots, rows=6, max_len=40, width=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    src_k = torch.randn(L, 1, H, width, D, generator=g).to(dtype)
    src_v = torch.randn(L, 1, H, width, D, generator=g).to(dtype)
    big = torch.randn(2, L, rows + 1, H, max_len, D, generator=g).to(dtype)
    dst_k, dst_v = big[0, :, 1:], big[1, :, 1:]  # views of a larger cache, as the engine's rows
    slot = torch.tensor([s for n, s in zip(sizes, slots, strict=True) for _ in range(n)])
    col = torch.tensor([c for n in sizes for c in range(n)])
    pad = torch.full((5,), 99)  # entries past total are never read
    slot, col = torch.cat([slot, pad]).int(), torch.cat([col, pad]).int()
    return src_k, src_v, dst_k, dst_v, slot, col, sum(sizes)


def loop_spec(src_k, src_v, dst_k, dst_v, slot, col, total):
    for j in range(total):
        dst_k[:, int(slot[j]), :, int(col[j])] = src_k[:, 0, :, j]
        dst_v[:, int(slot[j]), :, int(col[j])] = src_v[:, 0, :, j]


CASES = [
    pytest.param([3, 2], [5, 1], id="two-prompts"),
    pytest.param([33, 1, 17, 9], [0, 2, 4, 3], id="four-prompts-blocks"),
    pytest.param([40], [5], id="one-full-row"),
    pytest.param([], [], id="empty"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("sizes, slots", CASES)
def test_kernel_equals_reference_and_loop(sizes, slots, dtype, device):
    src_k, src_v, dst_k, dst_v, slot, col, total = case(sizes, slots, dtype=dtype)
    want_k, want_v = dst_k.clone(), dst_v.clone()
    loop_spec(src_k, src_v, want_k, want_v, slot, col, total)
    ref_k, ref_v = dst_k.clone(), dst_v.clone()
    kv_scatter_ref(src_k, src_v, ref_k, ref_v, slot, col, total)
    assert torch.equal(ref_k, want_k) and torch.equal(ref_v, want_v)
    dev = [x.to(device) for x in (src_k, src_v, dst_k, dst_v, slot, col)]
    kv_scatter_triton(*dev, total)
    assert torch.equal(dev[2].cpu(), want_k) and torch.equal(dev[3].cpu(), want_v)


def test_negative_control_wrong_column_differs(device):
    src_k, src_v, dst_k, dst_v, slot, col, total = case([7, 9], [1, 4])
    want_k = dst_k.clone()
    loop_spec(src_k, src_v, want_k, dst_v.clone(), slot, col, total)
    shifted = col.clone()
    shifted[:total] += 1  # one column off
    dev = [x.to(device) for x in (src_k, src_v, dst_k, dst_v, slot, shifted)]
    kv_scatter(*dev, total)
    assert not torch.equal(dev[2].cpu(), want_k)


def test_bad_inputs_raise_value_error():
    src_k, src_v, dst_k, dst_v, slot, col, total = case([3, 2], [5, 1])
    with pytest.raises(ValueError, match="int32"):
        kv_scatter_ref(src_k, src_v, dst_k, dst_v, slot.long(), col, total)
    with pytest.raises(ValueError, match="differ"):
        kv_scatter_ref(src_k[..., :8], src_v[..., :8], dst_k, dst_v, slot, col, total)
    with pytest.raises(ValueError, match="exceeds"):
        kv_scatter_ref(src_k[:, :, :, :4], src_v[:, :, :, :4], dst_k, dst_v, slot, col, total)
    with pytest.raises(ValueError, match="src_v"):
        kv_scatter_ref(src_k, src_v[:, :, :1], dst_k, dst_v, slot, col, total)
