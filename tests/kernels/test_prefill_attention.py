"""Prefill attention: query t of sequence b (t < lengths[b]) sits at cache slot start[b] + t and
attends causally to slots [0, start[b] + t]; rows t >= lengths[b] are padding and output zeros.
Checked against a loop-level fp64 spec written here, the SDPA reference, and chunked == one-shot."""

import math

import pytest
import torch

from samgpu.kernels.prefill_attention import (
    _prefill_attention_kernel,
    prefill_attention,
    prefill_attention_ref,
    prefill_attention_triton,
)

CUDA = torch.cuda.is_available()
BF16 = pytest.param(
    torch.bfloat16,
    3e-2,
    marks=pytest.mark.skipif(
        not CUDA, reason="the Triton interpreter computes tl.dot on bf16 wrongly"
    ),
    id="bf16",
)
DTYPES = [pytest.param(torch.float32, 1e-5, id="fp32"), BF16]


def causal_spec(q, k_cache, v_cache, start, lengths, scale):
    """Loop-level spec in fp64: softmax over slots 0..start+t for every real (b, t, h)."""
    b_, t_, hq, d = q.shape
    hkv = k_cache.shape[1]
    out = torch.zeros(b_, t_, hq, d, dtype=torch.float64)
    for b in range(b_):
        for t in range(int(lengths[b])):
            last = int(start[b]) + t
            for h in range(hq):
                kvh = h // (hq // hkv)
                keys = k_cache[b, kvh, : last + 1].double()
                vals = v_cache[b, kvh, : last + 1].double()
                w = torch.softmax(keys @ q[b, t, h].double() * scale, dim=0)
                out[b, t, h] = w @ vals
    return out


def make_case(b, t, hq, hkv, d, max_len, starts, lens, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hq, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, max_len, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, max_len, d, generator=g).to(dtype)
    start = torch.tensor(starts, dtype=torch.int32)
    lengths = torch.tensor(lens, dtype=torch.int32)
    # Slots beyond each sequence's last query are never read: NaN proves it.
    for i in range(b):
        k[i, :, starts[i] + lens[i] :] = float("nan")
        v[i, :, starts[i] + lens[i] :] = float("nan")
    return q, k, v, start, lengths


# (B, T, starts, lengths): plain prefill, ragged with an empty sequence and pad rows, chunked
# prefill (start > 0, not a multiple of the key block), a long single prompt (several row blocks).
CASES = [
    pytest.param(1, 37, [0], [37], id="B1-plain"),
    pytest.param(3, 21, [0, 0, 0], [21, 0, 9], id="B3-ragged-empty-pad"),
    pytest.param(3, 13, [5, 70, 0], [13, 4, 1], id="B3-chunked"),
    pytest.param(1, 90, [17], [90], id="B1-long-chunk"),
]


@pytest.mark.parametrize("dtype, atol", DTYPES)
@pytest.mark.parametrize("b, t, starts, lens", CASES)
def test_kernel_matches_causal_spec(b, t, starts, lens, dtype, atol, device):
    """GQA 6 q heads on 2 kv heads (group 3, not a power of two, as SmolLM2), head_dim 24 (padded
    to 32 in the kernel)."""
    hq, hkv, d, max_len = 6, 2, 24, 112
    q, k, v, start, lengths = make_case(b, t, hq, hkv, d, max_len, starts, lens, dtype)
    scale = 1 / math.sqrt(d)
    want = causal_spec(q, k, v, start, lengths, scale)
    inputs = [x.to(device) for x in (q, k, v, start, lengths)]
    got = prefill_attention_triton(*inputs, block_m=32, block_n=16).cpu()
    assert got.dtype == dtype and got.shape == (b, t, hq, d)
    ref = prefill_attention_ref(q, k, v, start, lengths)
    torch_err = (ref.double() - want).abs().max().item()
    kernel_err = (got.double() - want).abs().max().item()
    assert kernel_err <= 2 * torch_err + atol, (kernel_err, torch_err)
    for i in range(b):  # pad rows are exact zeros
        assert torch.equal(got[i, lens[i] :], torch.zeros_like(got[i, lens[i] :]))


def test_reference_matches_causal_spec():
    q, k, v, start, lengths = make_case(2, 9, 4, 2, 8, 20, [3, 0], [9, 5], torch.float64)
    want = causal_spec(q, k, v, start, lengths, 0.3)
    got = prefill_attention_ref(q, k, v, start, lengths, scale=0.3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "block_m, block_n, num_warps, num_stages", [(16, 16, 1, 1), (64, 32, 4, 2), (128, 64, 8, 3)]
)
def test_configurations_agree(block_m, block_n, num_warps, num_stages, device):
    """Any configuration gives the spec's answer (the GPU sweep may pick any of them)."""
    q, k, v, start, lengths = make_case(2, 40, 3, 1, 16, 80, [0, 31], [40, 33], torch.float32)
    want = causal_spec(q, k, v, start, lengths, 0.25)
    inputs = [x.to(device) for x in (q, k, v, start, lengths)]
    got = prefill_attention_triton(
        *inputs,
        scale=0.25,
        block_m=block_m,
        block_n=block_n,
        num_warps=num_warps,
        num_stages=num_stages,
    ).cpu()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_chunked_prefill_equals_one_shot(device):
    """A prompt of 50 tokens in chunks of 20, 20, 10 (start = 0, 20, 40) gives the one-shot rows."""
    hq, hkv, d, max_len, n = 4, 2, 16, 64, 50
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, n, hq, d, generator=g).to(device)
    k = torch.randn(1, hkv, max_len, d, generator=g).to(device)
    v = torch.randn(1, hkv, max_len, d, generator=g).to(device)
    full = prefill_attention_triton(
        q,
        k,
        v,
        torch.zeros(1, dtype=torch.int32, device=device),
        torch.full((1,), n, dtype=torch.int32, device=device),
    )
    for lo, hi in ((0, 20), (20, 40), (40, 50)):
        start = torch.full((1,), lo, dtype=torch.int32, device=device)
        lengths = torch.full((1,), hi - lo, dtype=torch.int32, device=device)
        part = prefill_attention_triton(q[:, lo:hi].contiguous(), k, v, start, lengths)
        torch.testing.assert_close(part, full[:, lo:hi], rtol=1e-5, atol=1e-5)


def test_strided_views_of_a_layered_cache(device):
    """The runner passes q sliced from a fused projection and one layer of [layers, B, ...]."""
    hq, hkv, d, max_len = 4, 2, 16, 32
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 12, (hq + 2 * hkv) * d, generator=g).to(device)
    q = qkv[..., : hq * d].unflatten(-1, (hq, d))  # non-contiguous over T
    cache = torch.randn(3, 2, hkv, max_len, d, generator=g).to(device)
    start = torch.tensor([0, 4], dtype=torch.int32, device=device)
    lengths = torch.tensor([12, 7], dtype=torch.int32, device=device)
    got = prefill_attention_triton(q, cache[1], cache[2], start, lengths)
    want = prefill_attention_ref(q, cache[1], cache[2], start, lengths)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_out_buffer_and_dispatch(device):
    q, k, v, start, lengths = make_case(2, 6, 4, 4, 16, 12, [0, 2], [6, 3], torch.float32)
    q, k, v, start, lengths = (x.to(device) for x in (q, k, v, start, lengths))
    k, v = k.nan_to_num(), v.nan_to_num()
    out = torch.full_like(q, float("nan"))
    res = prefill_attention(q, k, v, start, lengths, out=out)
    assert res.data_ptr() == out.data_ptr()
    want = prefill_attention_ref(q, k, v, start, lengths)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not CUDA, reason="compiled-variant cache exists on CUDA only")
def test_no_recompile_per_length():
    """T, lengths and start are runtime values: new prompt lengths reuse the compiled kernel."""
    hq, hkv, d, max_len = 9, 3, 64, 256
    k = torch.randn(1, hkv, max_len, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    counts = []
    for t in (37, 64, 129, 200):
        q = torch.randn(1, t, hq, d, device="cuda", dtype=torch.bfloat16)
        start = torch.zeros(1, dtype=torch.int32, device="cuda")
        lengths = torch.full((1,), t, dtype=torch.int32, device="cuda")
        prefill_attention_triton(q, k, v, start, lengths, block_m=64, num_warps=4)
        counts.append(sum(len(c[0]) for c in _prefill_attention_kernel.device_caches.values()))
    assert counts[0] == counts[-1], counts


def test_bad_inputs_raise_value_error(device):
    q, k, v, start, lengths = make_case(2, 6, 4, 2, 16, 12, [0, 2], [6, 3], torch.float32)
    q, k, v, start, lengths = (x.to(device) for x in (q, k, v, start, lengths))
    with pytest.raises(ValueError, match="not a multiple"):
        prefill_attention_triton(q[:, :, :3], k, v, start, lengths)
    with pytest.raises(ValueError, match="start must be"):
        prefill_attention_triton(q, k, v, start.long(), lengths)
    with pytest.raises(ValueError, match="lengths must be"):
        prefill_attention_ref(q, k, v, start, lengths[:1])
    with pytest.raises(ValueError, match="differ"):
        prefill_attention_triton(q, k.half(), v.half(), start, lengths)
    with pytest.raises(ValueError, match="out must be"):
        prefill_attention_triton(q, k, v, start, lengths, out=torch.empty(2, 6, 4, 8))
    with pytest.raises(ValueError, match="power of two"):
        prefill_attention_triton(q, k, v, start, lengths, block_m=24)


@pytest.mark.parametrize("upcast", [False, True])
def test_reference_of_a_plain_prefill_builds_no_mask(monkeypatch, upcast):
    """Rows that all start at slot 0 and fill every column (one prompt: the CPU prefill of batch 1)
    take SDPA's causal path, which builds no [B, T, L] visibility mask; equal to the masked SDPA
    and to the spec. A padded batch still builds the mask (the negative control)."""
    import samgpu.kernels.prefill_attention as mod

    q, k, v, start, lengths = make_case(2, 11, 6, 2, 8, 24, [0, 0], [11, 11], torch.float32)
    masked = mod.visible_sdpa(
        q,
        k,
        v,
        mod.plan_from_visible(mod.prefill_visible(start, lengths, 11, 24)),
        scale=0.3,
        upcast=upcast,
    )
    built = []
    visible = mod.prefill_visible
    monkeypatch.setattr(mod, "prefill_visible", lambda *a: built.append(1) or visible(*a))
    got = prefill_attention_ref(q, k, v, start, lengths, scale=0.3, upcast=upcast)
    assert not built
    torch.testing.assert_close(got, masked, rtol=1e-6, atol=1e-6)
    want = causal_spec(q, k, v, start, lengths, 0.3)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    prefill_attention_ref(q, k, v, start, torch.tensor([11, 7], dtype=torch.int32), scale=0.3)
    assert built


def segment_spec(q, k_cache, v_cache, lengths, segment_start, scale):
    """Loop-level spec in fp64 of packed prompts (start 0): query t sees slots
    segment_start[b, t] .. t."""
    b_, t_, hq, d = q.shape
    hkv = k_cache.shape[1]
    out = torch.zeros(b_, t_, hq, d, dtype=torch.float64)
    for b in range(b_):
        for t in range(int(lengths[b])):
            first = int(segment_start[b, t])
            for h in range(hq):
                kvh = h // (hq // hkv)
                keys = k_cache[b, kvh, first : t + 1].double()
                vals = v_cache[b, kvh, first : t + 1].double()
                w = torch.softmax(keys @ q[b, t, h].double() * scale, dim=0)
                out[b, t, h] = w @ vals
    return out


def pack(prompt_lens: list[int], width: int) -> list[int]:
    """segment_start of prompts packed back to back; the tail (padding) is one token per segment."""
    seg = []
    for n in prompt_lens:
        seg += [len(seg)] * n
    return seg + list(range(len(seg), width))


# rows of packed prompts (lengths per row), T: segments inside one key block, segments straddling
# row and key blocks, one-token prompts, a row of one prompt, a tail of padding.
PACKED_CASES = [
    pytest.param([[5, 17, 1, 30]], 60, id="B1-four-prompts-tail"),
    pytest.param([[1, 1, 1, 40], [53], [16, 16, 16]], 56, id="B3-mixed"),
    pytest.param([[33, 2, 20]], 55, id="B1-no-tail"),
]


@pytest.mark.parametrize("dtype, atol", DTYPES)
@pytest.mark.parametrize("rows, t", PACKED_CASES)
@pytest.mark.parametrize("block_m, block_n", [(32, 16), (16, 32)])
def test_packed_prompts_match_segment_spec(rows, t, block_m, block_n, dtype, atol, device):
    """Each packed prompt attends to itself alone (spec), exactly as the reference; pad rows are
    zeros. Small blocks make key and row blocks straddle segment boundaries."""
    hq, hkv, d, max_len = 6, 2, 24, 64
    b = len(rows)
    lens = [sum(r) for r in rows]
    q, k, v, start, lengths = make_case(b, t, hq, hkv, d, max_len, [0] * b, lens, dtype)
    seg = torch.tensor([pack(r, t) for r in rows], dtype=torch.int32)
    scale = 1 / math.sqrt(d)
    want = segment_spec(q, k, v, lengths, seg, scale)
    inputs = [x.to(device) for x in (q, k, v, start, lengths, seg)]
    got = prefill_attention_triton(*inputs, block_m=block_m, block_n=block_n).cpu()
    ref = prefill_attention_ref(q, k, v, start, lengths, seg)
    torch_err = (ref.double() - want).abs().max().item()
    kernel_err = (got.double() - want).abs().max().item()
    assert torch_err <= atol and kernel_err <= 2 * torch_err + atol, (kernel_err, torch_err)
    for i in range(b):
        assert torch.equal(got[i, lens[i] :], torch.zeros_like(got[i, lens[i] :]))


def test_packed_prompts_equal_separate_prefills(device):
    """Three prompts packed into one row give each prompt's own prefill (its K/V at slots 0..n-1
    of a row of its own); the negative control, the same row without segment_start (one long
    causal prompt), differs after the first prompt."""
    hq, hkv, d, sizes = 4, 2, 16, [7, 20, 13]
    total, g = sum(sizes), torch.Generator().manual_seed(11)
    q = torch.randn(1, total, hq, d, generator=g)
    k = torch.randn(1, hkv, total, d, generator=g)
    v = torch.randn(1, hkv, total, d, generator=g)
    zero = torch.zeros(1, dtype=torch.int32)
    full = torch.tensor([total], dtype=torch.int32)
    seg = torch.tensor([pack(sizes, total)], dtype=torch.int32)
    dev = [x.to(device) for x in (q, k, v, zero, full)]
    packed = prefill_attention_triton(*dev, seg.to(device), block_m=16, block_n=16).cpu()
    causal = prefill_attention_triton(*dev, block_m=16, block_n=16).cpu()
    lo = 0
    for n in sizes:
        one = [x[:, :, lo : lo + n].contiguous() for x in (k, v)]
        alone = prefill_attention_triton(
            q[:, lo : lo + n].contiguous().to(device),
            *(x.to(device) for x in one),
            zero.to(device),
            torch.tensor([n], dtype=torch.int32, device=device),
        ).cpu()
        torch.testing.assert_close(packed[:, lo : lo + n], alone, rtol=1e-5, atol=1e-5)
        lo += n
    torch.testing.assert_close(causal[:, : sizes[0]], packed[:, : sizes[0]])
    assert (causal[:, sizes[0] :] - packed[:, sizes[0] :]).abs().max() > 1e-2


def test_bad_segment_start_raises_value_error(device, monkeypatch):
    q, k, v, start, lengths = make_case(1, 6, 4, 2, 16, 12, [0], [6], torch.float32)
    q, k, v, start, lengths = (x.to(device) for x in (q, k, v, start, lengths))
    with pytest.raises(ValueError, match="segment_start must be"):
        prefill_attention_triton(q, k, v, start, lengths, torch.zeros(1, 6, device=device))
    with pytest.raises(ValueError, match="segment_start must be"):
        prefill_attention_ref(q, k, v, start, lengths, torch.zeros(1, 4, dtype=torch.int32))
    monkeypatch.setenv("SAMGPU_DEBUG", "1")
    bad = torch.tensor([[0, 0, 3, 2, 4, 5]], dtype=torch.int32, device=device)  # decreasing
    with pytest.raises(ValueError, match="non-decreasing"):
        prefill_attention_triton(q, k, v, start, lengths, bad)
