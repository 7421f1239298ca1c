"""kv_compact: accepted nodes' K/V move to contiguous positions, all layers at once. A copy, so
the Triton kernel (interpreter on CPU) must match the reference bitwise, overlaps included."""

import pytest
import torch

from samgpu.kernels.kv_compact import kv_compact, kv_compact_ref, kv_compact_triton
from samgpu.kernels.types import NO_PARENT

P = NO_PARENT
IMPLS = [pytest.param(kv_compact_triton, id="triton"), pytest.param(kv_compact_ref, id="ref")]


def _i32(x, device="cpu"):
    return torch.tensor(x, dtype=torch.int32, device=device)


def _slot_cache(num_layers, num_reqs, num_heads, max_len, head_dim, dtype, device):
    """Every element encodes its own (layer, seq, head, slot): moved rows are recognisable."""
    idx = torch.arange(num_layers * num_reqs * num_heads * max_len, dtype=torch.float32)
    k = idx.view(num_layers, num_reqs, num_heads, max_len, 1).expand(-1, -1, -1, -1, head_dim)
    k = (k + torch.arange(head_dim) / 1024).to(dtype).contiguous().to(device)
    return k, (-k).contiguous()


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_overlapping_move(impl, device):
    """cache_len 5, accepted [0, 2, 3], num_accepted 2: slot 7 -> 6 and slot 8 -> 7. Slot 7 is
    both a source (t=1) and a destination (t=2): it must end up holding old slot 8, and slot 6
    old slot 7.
    Slots 0..5 and 8.. are untouched; sequence 1 (num_accepted 0) is untouched."""
    k, v = _slot_cache(2, 2, 3, 12, 4, torch.float32, device)
    k0, v0 = k.clone(), v.clone()
    impl(
        k, v, _i32([5, 3], device), _i32([[0, 2, 3, P], [0, P, P, P]], device), _i32([2, 0], device)
    )
    want_k, want_v = k0.clone(), v0.clone()
    want_k[:, 0, :, 6], want_k[:, 0, :, 7] = k0[:, 0, :, 7], k0[:, 0, :, 8]
    want_v[:, 0, :, 6], want_v[:, 0, :, 7] = v0[:, 0, :, 7], v0[:, 0, :, 8]
    assert torch.equal(k, want_k) and torch.equal(v, want_v)


@pytest.mark.parametrize("impl", IMPLS)
def test_chain_path_and_full_path(impl, device):
    """Row 0: a chain path accepted_nodes[t] == t (nothing moves). Row 1: the deepest path of a
    full tree, nodes [0, 1, 3, 6] at cache_len 0 -> slots 3 -> 2 and 6 -> 3."""
    k, v = _slot_cache(3, 2, 1, 10, 8, torch.float32, device)
    k0 = k.clone()
    impl(
        k,
        v,
        _i32([2, 0], device),
        _i32([[0, 1, 2, 3], [0, 1, 3, 6]], device),
        _i32([3, 3], device),
    )
    want = k0.clone()
    want[:, 1, :, 2], want[:, 1, :, 3] = k0[:, 1, :, 3], k0[:, 1, :, 6]
    assert torch.equal(k, want) and torch.equal(v, -want)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("num_reqs,k_slots,head_dim", [(1, 2, 4), (3, 6, 12)])
def test_random_paths_triton_equals_ref(dtype, num_reqs, k_slots, head_dim, device):
    """Random strictly increasing paths (so src >= dst, with overlaps), random cache_len, on a
    view of a larger cache (non-contiguous batch dimension)."""
    gen = torch.Generator().manual_seed(k_slots * 10 + num_reqs)
    num_layers, num_heads, max_nodes, max_len = 2, 2, 9, 40
    big = torch.randn(num_layers, num_reqs + 2, num_heads, max_len, head_dim, generator=gen)
    big_v = torch.randn(big.shape, generator=gen)
    accepted = torch.full((num_reqs, k_slots), P, dtype=torch.int32)
    num_acc = torch.randint(0, k_slots, (num_reqs,), generator=gen, dtype=torch.int32)
    for b in range(num_reqs):
        path = sorted(torch.randperm(max_nodes - 1, generator=gen)[: int(num_acc[b])] + 1)
        accepted[b, : len(path) + 1] = torch.tensor([0, *path], dtype=torch.int32)
    cache_len = torch.randint(0, max_len - max_nodes, (num_reqs,), generator=gen, dtype=torch.int32)
    ka, va = big.to(dtype).to(device).clone(), big_v.to(dtype).to(device).clone()
    kb, vb = big.to(dtype).clone(), big_v.to(dtype).clone()
    args = (cache_len, accepted, num_acc)
    kv_compact_triton(
        ka[:, 1 : num_reqs + 1], va[:, 1 : num_reqs + 1], *(a.to(device) for a in args)
    )
    kv_compact_ref(kb[:, 1 : num_reqs + 1], vb[:, 1 : num_reqs + 1], *args)
    assert torch.equal(ka.cpu(), kb) and torch.equal(va.cpu(), vb)
    moved = any(
        int(accepted[b, t]) != t for b in range(num_reqs) for t in range(1, int(num_acc[b]) + 1)
    )
    assert moved != torch.equal(kb, big.to(dtype))


def test_dispatch_and_bad_shapes():
    k, v = _slot_cache(1, 1, 1, 6, 2, torch.float32, "cpu")
    k0 = k.clone()
    kv_compact(k, v, _i32([0]), _i32([[0, 2]]), _i32([1]))
    assert torch.equal(k[0, 0, 0, 1], k0[0, 0, 0, 2])
    with pytest.raises(ValueError, match="cache_len"):
        kv_compact_ref(k, v, _i32([0, 0]), _i32([[0, 2]]), _i32([1]))
    with pytest.raises(ValueError, match="v_cache"):
        kv_compact_ref(k, v[..., :1], _i32([0]), _i32([[0, 2]]), _i32([1]))
