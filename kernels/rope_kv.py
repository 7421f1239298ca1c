"""Rotary embedding of q and k straight out of the fused QKV projection, with k and v written into
one layer of the static KV cache: one launch instead of ~14 (slices, cat, muls, adds, scatters).

Inputs: `qkv [B, T, (Hq + 2 * Hkv) * D]` (q heads, then k heads, then v heads), `cos, sin
[B, T, D / 2] fp32` (the RoPE table of each token's position, computed once per forward by
the runner and shared by all layers), `slot_start [B] int32` (token t of sequence b is stored at
cache slot slot_start[b] + t: cache_len for a verify step, 0 for a prefill). Outputs:
`q_out [B, T, Hq, D]` (rotated q), `k_cache, v_cache [B, Hkv, L, D]` (one layer; rotated k and
plain v written at the slots).

RoPE as transformers' Llama computes it: f = position * inv_freq (fp32), cos/sin = cos(f), sin(f)
times the RoPE type's attention scaling (1 but YaRN), rounded to the model dtype; x1, x2 = the
halves of a head;
    out = [x1 * cos - x2 * sin,  x2 * cos + x1 * sin]   (each product and sum rounded to the dtype;
                                                     float32: the sum is one FMA, see rope_rows)
Example: D = 2, inv_freq = [1], position 0 -> identity; position pi/2 -> [x1, x2] -> [-x2, x1].

Kernel: one program per token, over all its heads at once (one program per (token, head) was
~9 us per layer for a 1,000-token prefill on an H200: 12k programs of 32 elements each).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton


@triton.jit
def rope_table(
    cos_ptr, sin_ptr, table_row, offs_d, mask, dtype, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr
):
    """cos, sin of table row(s) `table_row` (a [B * T, D / 2] fp32 table), spread over the D
    columns (column d reads entry d mod D/2) and rounded to `dtype`, as float32. ROWS False: one
    scalar row -> [BLOCK_D] (a token's heads); True: rows [R] -> [R, BLOCK_D] (`mask` matches)."""
    half: tl.constexpr = HEAD_DIM // 2
    col = tl.where(offs_d < half, offs_d, offs_d - half)
    if ROWS:
        table = table_row.to(tl.int64)[:, None] * half + col[None, :]
    else:
        table = table_row.to(tl.int64) * half + col
    c = tl.load(cos_ptr + table, mask=mask, other=0.0).to(dtype).to(tl.float32)
    s = tl.load(sin_ptr + table, mask=mask, other=0.0).to(dtype).to(tl.float32)
    return c, s


@triton.jit
def rope_rows(row_ptrs, c, s, mask, offs_d, HEAD_DIM: tl.constexpr):
    """Rows of heads at row_ptrs [R, 1], rotated with `rope_table`'s c, s ([R, BLOCK_D] or
    [1, BLOCK_D]) as transformers rounds it (each product and the sum rounded to the dtype):
    out[d] = x[d] * cos - x[d + D/2] * sin for d < D/2, x[d] * cos + x[d - D/2] * sin above.
    Shared by rope_kv and the tree-attention kernel's RoPE prologue. In float32 the sum is an
    explicit FMA: left to the compiler, x * cos + p * sin is contracted or not per compiled kernel,
    which gave a token's k other bits in the two kernels (1 ulp, on an H200)."""
    half: tl.constexpr = HEAD_DIM // 2
    low = offs_d < half
    partner = tl.where(low, offs_d + half, offs_d - half)
    x = tl.load(row_ptrs + offs_d[None, :], mask=mask, other=0.0)
    p = tl.load(row_ptrs + partner[None, :], mask=mask, other=0.0)
    dtype = x.dtype
    sign = tl.where(low, -1.0, 1.0)[None, :]
    ps = (sign * p.to(tl.float32) * s).to(dtype).to(tl.float32)
    if dtype == tl.float32:
        out = tl.fma(x, c, ps)
    else:
        out = ((x.to(tl.float32) * c).to(dtype).to(tl.float32) + ps).to(dtype)
    return out


@triton.jit
def _rope_kv_kernel(
    qkv_ptr,  # [B, T, (Hq + 2 * Hkv) * D]
    cos_ptr,  # [B, T, D / 2] fp32 (contiguous)
    sin_ptr,  # [B, T, D / 2] fp32 (contiguous)
    slot_ptr,  # [B] int32: cache slot of token 0
    q_out_ptr,  # [B, T, Hq, D] (out)
    k_cache_ptr,  # [B, Hkv, L, D] (out at slot_start + t)
    v_cache_ptr,  # [B, Hkv, L, D] (out at slot_start + t)
    stride_qkv_b,
    stride_qkv_t,
    stride_q_b,
    stride_q_t,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    seq_len,  # T
    num_q_heads,  # Hq
    num_kv_heads,  # Hkv
    HALF: tl.constexpr,  # D / 2
    BLOCK_HALF: tl.constexpr,  # next power of two >= D / 2
    BLOCK_HEADS: tl.constexpr,  # next power of two >= Hq + Hkv
    BLOCK_KV: tl.constexpr,  # next power of two >= Hkv
):
    """Grid (B * T,): one token, all its heads at once (rows below Hq rotate q, the next Hkv
    rotate k; the v heads are copied). The rotation is `rope_rows`, the code the tree-attention
    kernel's RoPE prologue runs, so both give a token's k the same bits."""
    bt = tl.program_id(0)
    b = (bt // seq_len).to(tl.int64)
    t = (bt % seq_len).to(tl.int64)
    head_dim: tl.constexpr = 2 * HALF
    offs_d = tl.arange(0, 2 * BLOCK_HALF)
    d_ok = offs_d < head_dim
    row = qkv_ptr + b * stride_qkv_b + t * stride_qkv_t
    heads = tl.arange(0, BLOCK_HEADS)
    is_q = heads < num_q_heads
    is_k = (heads >= num_q_heads) & (heads < num_q_heads + num_kv_heads)
    both = (is_q | is_k)[:, None] & d_ok[None, :]
    dtype = qkv_ptr.dtype.element_ty
    c, s = rope_table(cos_ptr, sin_ptr, bt, offs_d, d_ok, dtype, head_dim, False)  # one row
    out = rope_rows(row + heads[:, None] * head_dim, c[None, :], s[None, :], both, offs_d, head_dim)
    q_dst = (
        q_out_ptr + b * stride_q_b + t * stride_q_t + heads[:, None] * head_dim + offs_d[None, :]
    )
    tl.store(q_dst, out, mask=is_q[:, None] & d_ok[None, :])
    slot = tl.load(slot_ptr + b).to(tl.int64) + t
    kvh = tl.maximum(heads - num_q_heads, 0).to(tl.int64)  # (q rows: masked, kept in range)
    k_dst = k_cache_ptr + b * stride_kb + slot * stride_kl + kvh[:, None] * stride_kh
    tl.store(k_dst + offs_d[None, :], out, mask=is_k[:, None] & d_ok[None, :])
    vh = tl.arange(0, BLOCK_KV)
    v_mask = (vh < num_kv_heads)[:, None] & d_ok[None, :]
    v_src = row + (num_q_heads + num_kv_heads + vh[:, None]) * head_dim + offs_d[None, :]
    v = tl.load(v_src, mask=v_mask, other=0.0)
    v_dst = v_cache_ptr + b * stride_vb + vh[:, None].to(tl.int64) * stride_vh + slot * stride_vl
    tl.store(v_dst + offs_d[None, :], v, mask=v_mask)


def _num_warps(block_heads: int, block_half: int) -> int:
    """One warp per 512 elements of a token's q and k halves, 1 to 4."""
    return max(1, min(4, block_heads * block_half // 512))


def _aot_specs() -> list[AotSpec]:
    specs = []
    ints = (
        "stride_qkv_b stride_qkv_t stride_q_b stride_q_t stride_kb stride_kh "
        "stride_kl stride_vb stride_vh stride_vl seq_len num_q_heads num_kv_heads"
    ).split()
    for dtype in ("fp32", "bf16", "fp16"):
        ptr = f"*{dtype}"
        sig = {"qkv_ptr": ptr, "cos_ptr": "*fp32", "sin_ptr": "*fp32", "slot_ptr": "*i32"}
        sig |= {"q_out_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr}
        sig |= dict.fromkeys(ints, "i32")
        sig |= {"HALF": "constexpr", "BLOCK_HALF": "constexpr"}
        sig |= {"BLOCK_HEADS": "constexpr", "BLOCK_KV": "constexpr"}
        # SmolLM2 (9 + 3 heads of 64), Llama-2-7B (32 + 32 heads of 128)
        for half, heads, kv in ((32, 16, 4), (64, 64, 32)):
            consts = {"HALF": half, "BLOCK_HALF": half, "BLOCK_HEADS": heads, "BLOCK_KV": kv}
            specs.append(AotSpec(_rope_kv_kernel, sig, consts, _num_warps(heads, half)))
    return specs


AOT_SPECS = _aot_specs()


def validate_rope_inputs(qkv, cos, sin, slot_start, k_cache, v_cache, num_q_heads):
    """(B, T, Hkv, D) of rope_kv's inputs, or a ValueError naming the bad one."""
    if qkv.dim() != 3:
        raise ValueError(f"rope_kv: qkv must be [B, T, (Hq + 2 Hkv) * D], got {tuple(qkv.shape)}")
    b, t, width = qkv.shape
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[0] < b:
        raise ValueError(
            f"rope_kv: k_cache/v_cache must be [B>={b}, Hkv, L, D], got "
            f"{tuple(k_cache.shape)} / {tuple(v_cache.shape)}"
        )
    hkv, d = k_cache.shape[1], k_cache.shape[3]
    if width != (num_q_heads + 2 * hkv) * d or d % 2:
        raise ValueError(
            f"rope_kv: qkv width {width} != (Hq={num_q_heads} + 2 * Hkv={hkv}) * D={d} (D even)"
        )
    for name, x in (("cos", cos), ("sin", sin)):
        if x.shape != (b, t, d // 2) or x.dtype != torch.float32 or not x.is_contiguous():
            raise ValueError(
                f"rope_kv: {name} must be contiguous [B={b}, T={t}, D/2={d // 2}] float32, got "
                f"{tuple(x.shape)} {x.dtype}"
            )
    if slot_start.dim() != 1 or slot_start.shape[0] < b or slot_start.dtype != torch.int32:
        raise ValueError(
            f"rope_kv: slot_start must be [B>={b}] int32, got "
            f"{tuple(slot_start.shape)} {slot_start.dtype}"
        )
    if k_cache.dtype != qkv.dtype or v_cache.dtype != qkv.dtype:
        raise ValueError(f"rope_kv: cache dtype {k_cache.dtype} != qkv dtype {qkv.dtype}")
    return b, t, hkv, d


def rope_kv_triton(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_start: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    num_q_heads: int,
    q_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate q into q_out [B, T, Hq, D] (returned); rotate k and store k, v into the caches."""
    b, t, hkv, d = validate_rope_inputs(qkv, cos, sin, slot_start, k_cache, v_cache, num_q_heads)
    if q_out is None:
        q_out = torch.empty(b, t, num_q_heads, d, dtype=qkv.dtype, device=qkv.device)
    elif q_out.shape != (b, t, num_q_heads, d) or not q_out.is_contiguous():
        raise ValueError(f"rope_kv: q_out must be contiguous [B, T, Hq, D], got {q_out.shape}")
    for name, x in (("qkv", qkv), ("k_cache", k_cache), ("v_cache", v_cache)):
        if x.stride(-1) != 1:
            raise ValueError(f"rope_kv: {name} needs a contiguous last dim, strides {x.stride()}")
    if b * t == 0:
        return q_out
    block_half = triton.next_power_of_2(d // 2)
    block_heads = triton.next_power_of_2(num_q_heads + hkv)
    _rope_kv_kernel[(b * t,)](
        qkv,
        cos,
        sin,
        slot_start,
        q_out,
        k_cache,
        v_cache,
        qkv.stride(0),
        qkv.stride(1),
        q_out.stride(0),
        q_out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        t,
        num_q_heads,
        hkv,
        HALF=d // 2,
        BLOCK_HALF=block_half,
        BLOCK_HEADS=block_heads,
        BLOCK_KV=triton.next_power_of_2(hkv),
        num_warps=_num_warps(block_heads, block_half),
    )
    return q_out


def rope_kv_ref(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_start: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    num_q_heads: int,
    q_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """transformers' Llama RoPE op by op, then a scatter of k and v into the cache slots."""
    b, t, hkv, d = validate_rope_inputs(qkv, cos, sin, slot_start, k_cache, v_cache, num_q_heads)
    q, k, v = qkv.split([num_q_heads * d, hkv * d, hkv * d], dim=-1)
    cos = torch.cat((cos, cos), dim=-1).to(qkv.dtype)[:, :, None, :]
    sin = torch.cat((sin, sin), dim=-1).to(qkv.dtype)[:, :, None, :]

    def rotate(x):
        x = x.reshape(b, t, -1, d)
        rotated = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1)
        return x * cos + rotated * sin

    slot = slot_start[:b, None].to(torch.int64) + torch.arange(t, device=qkv.device)  # [B, T]
    slot = slot[:, None, :, None].expand(b, hkv, t, d)
    k_cache[:b].scatter_(2, slot, rotate(k).transpose(1, 2))
    v_cache[:b].scatter_(2, slot, v.reshape(b, t, hkv, d).transpose(1, 2))
    rq = rotate(q)
    return rq.contiguous() if q_out is None else q_out.copy_(rq)


def rope_kv(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_start: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    num_q_heads: int,
    q_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch: Triton on CUDA tensors, the torch reference otherwise."""
    impl = rope_kv_triton if use_triton(qkv) else rope_kv_ref
    return impl(qkv, cos, sin, slot_start, k_cache, v_cache, num_q_heads=num_q_heads, q_out=q_out)
