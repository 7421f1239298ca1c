"""RoPE on q and k out of the fused QKV row, k and v stored at cache slots slot_start + t: equals
transformers' apply_rotary_pos_emb and a plain copy into the slots; other slots untouched."""

import math

import pytest
import torch

from samgpu.kernels.rope_kv import rope_kv, rope_kv_ref, rope_kv_triton

CUDA = torch.cuda.is_available()
# The Triton interpreter rounds float32 -> bfloat16 by truncation (the GPU to nearest even).
DTYPES = [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 1e-2 if CUDA else 3e-2)]
SENTINEL = 7.0


def tables(positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0):
    freqs = positions[..., None].to(torch.float32) * inv_freq
    return (freqs.cos() * scaling).contiguous(), (freqs.sin() * scaling).contiguous()


def test_worked_example_quarter_turn(device):
    """D = 2, one q head and one kv head, inv_freq = [pi/2], position 1: [x1, x2] -> [-x2, x1];
    k rotates the same way, v is copied; token 0 lands in slot 3."""
    # q = [1, 2], k = [3, 4], v = [5, 6]
    qkv = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]], device=device)
    cos, sin = (x.to(device) for x in tables(torch.tensor([[1]]), torch.tensor([math.pi / 2])))
    for impl in (rope_kv_triton, rope_kv_ref):
        k_cache = torch.full((1, 1, 5, 2), SENTINEL, device=device)
        v_cache = torch.full((1, 1, 5, 2), SENTINEL, device=device)
        slot = torch.tensor([3], dtype=torch.int32, device=device)
        q = impl(qkv, cos, sin, slot, k_cache, v_cache, num_q_heads=1).cpu()
        k_cache, v_cache = k_cache.cpu(), v_cache.cpu()
        torch.testing.assert_close(q, torch.tensor([[[[-2.0, 1.0]]]]), atol=1e-6, rtol=0)
        torch.testing.assert_close(k_cache[0, 0, 3], torch.tensor([-4.0, 3.0]), atol=1e-6, rtol=0)
        assert torch.equal(v_cache[0, 0, 3], torch.tensor([5.0, 6.0]))
        assert (k_cache[0, 0, [0, 1, 2, 4]] == SENTINEL).all()


@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_matches_transformers_rope_and_cache_slots(dtype, tol, device):
    """B = 2, T = 3, 4 q heads on 2 kv heads, D = 16; sequence 0 writes slots 5..7 (a verify step at
    cache_len 5, tree depths 0, 1, 1), sequence 1 slots 0..2 (a prefill); YaRN-like scaling 1.1."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b, t, hq, hkv, d, max_len = 2, 3, 4, 2, 16, 10
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(b, t, (hq + 2 * hkv) * d, generator=g).to(dtype)
    positions = torch.tensor([[5, 6, 6], [0, 1, 2]])
    slot_start = torch.tensor([5, 0], dtype=torch.int32)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    cos, sin = tables(positions, inv_freq, 1.1)
    qkv, cos, sin, slot_start = (t.to(device) for t in (qkv, cos, sin, slot_start))
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    full_cos = torch.cat((cos, cos), -1).to(dtype)
    full_sin = torch.cat((sin, sin), -1).to(dtype)
    want_q, want_k = apply_rotary_pos_emb(
        q.view(b, t, hq, d), k.view(b, t, hkv, d), full_cos, full_sin, unsqueeze_dim=2
    )
    for impl, exact in ((rope_kv_ref, True), (rope_kv_triton, False)):
        k_cache = torch.full((b, hkv, max_len, d), SENTINEL, dtype=dtype, device=device)
        v_cache = torch.full((b, hkv, max_len, d), SENTINEL, dtype=dtype, device=device)
        q_out = impl(qkv, cos, sin, slot_start, k_cache, v_cache, num_q_heads=hq)
        check = (
            (lambda a, w: torch.testing.assert_close(a, w, rtol=0, atol=0))
            if exact
            else (lambda a, w: torch.testing.assert_close(a, w, rtol=tol, atol=tol))
        )
        check(q_out, want_q)
        for s, start in enumerate((5, 0)):
            check(k_cache[s, :, start : start + t], want_k[s].transpose(0, 1))
            assert torch.equal(
                v_cache[s, :, start : start + t], v[s].view(t, hkv, d).transpose(0, 1)
            )
            untouched = torch.ones(max_len, dtype=torch.bool, device=device)
            untouched[start : start + t] = False
            assert (k_cache[s, :, untouched] == SENTINEL).all()
            assert (v_cache[s, :, untouched] == SENTINEL).all()


def test_dispatch_out_buffer_and_bad_shapes(device):
    """On CUDA `rope_kv` dispatches to the kernel, on CPU to the reference."""
    b, t, hq, hkv, d = 1, 2, 2, 1, 8
    qkv = torch.randn(b, t, (hq + 2 * hkv) * d, device=device)
    cos, sin = (x.to(device) for x in tables(torch.tensor([[0, 1]]), torch.rand(d // 2)))
    k_cache = torch.zeros(b, hkv, 4, d, device=device)
    v_cache = torch.zeros(b, hkv, 4, d, device=device)
    slot = torch.zeros(b, dtype=torch.int32, device=device)
    q_out = torch.empty(b, t, hq, d, device=device)
    assert rope_kv(qkv, cos, sin, slot, k_cache, v_cache, num_q_heads=hq, q_out=q_out) is q_out
    want_k, want_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    want_q = rope_kv_ref(qkv, cos, sin, slot, want_k, want_v, num_q_heads=hq)
    torch.testing.assert_close(q_out, want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_cache, want_k, rtol=1e-6, atol=1e-6)
    assert torch.equal(v_cache, want_v)
    with pytest.raises(ValueError, match="qkv width"):
        rope_kv_triton(qkv, cos, sin, slot, k_cache, v_cache, num_q_heads=3)
    with pytest.raises(ValueError, match="cos must be"):
        rope_kv_triton(qkv, cos[:, :1], sin, slot, k_cache, v_cache, num_q_heads=hq)
    with pytest.raises(ValueError, match="slot_start must be"):
        rope_kv_ref(qkv, cos, sin, slot.long(), k_cache, v_cache, num_q_heads=hq)
