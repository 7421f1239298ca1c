"""Prefill attention: causal flash attention of a chunk of prompt tokens against the static cache.

Layout (one layer): queries `q [B, T, Hq, D]` (the q projection viewed per head, no transpose), one
layer of the static cache `k_cache, v_cache [B, Hkv, L, D]` in which the chunk's own keys/values
are already written, `start [B] int32`, `lengths [B] int32`. Query t < lengths[b] of sequence b
sits at logical position (= cache slot) start[b] + t and attends to slots [0, start[b] + t]
(causal). start[b] = 0 is a plain prefill; start[b] > 0 is chunked prefill, the earlier chunks being
already in the cache. Rows t >= lengths[b] are padding and output zeros. Output `out [B, T, Hq, D]`.
Requires start[b] + lengths[b] <= L and lengths[b] <= T (checked under SAMGPU_DEBUG=1).

Example: start = [0, 5], lengths = [3, 2], T = 3: sequence 0's queries see slots {0}, {0, 1},
{0, 1, 2}; sequence 1's queries see slots 0..5 and 0..6; its row t = 2 is padding (zeros).

Packed prompts (optional `segment_start [B, T] int32`, non-decreasing along T, segment_start[b, t]
<= t): row b holds several prompts back to back and query t sees only its own prompt, slots
[start[b] + segment_start[b, t], start[b] + t]. One call over the concatenated prompts of an
admission computes no padding but the call's tail (samgpu/decoding/prefill.py). Example: two
prompts of 3 and 2 tokens packed: segment_start = [0, 0, 0, 3, 3]; query 4 sees slots {3, 4}.

Kernel (flash attention forward): one program per (block of BLOCK_M query rows, kv head,
sequence). Rows are (token, q head of the kv head's group) pairs flattened token-major,
row = t * group + g, so the group's q heads share one pass over K/V and a row block covers
~BLOCK_M / group consecutive tokens (causal work stays tight). Two loops over key blocks of BLOCK_N:
keys [start + seg_last, start + t_first] that every row of the block sees (no mask; seg_last: the
segment start of the block's last row), between masked loops over the keys before (where a block
straddles a segment boundary, rows that see no key of a block are guarded) and the diagonal band up
to start + t_last (causal mask per row). Online softmax in fp32, exp2 with log2(e) folded into the
scale, tensor-core dots (IEEE fp32 when the inputs are fp32).

No recompiles and no host syncs: T is a runtime int (`do_not_specialize`; the strides keep Triton's
divisible-by-16 hint, which every cache layout meets, so K/V loads vectorise), the grid
is (cdiv(T * group, BLOCK_M), Hkv, B) from shapes only, the per-sequence start and length are read
on the device. Unlike cuDNN SDPA there is no per-length planning, so every prompt length costs the
same host time and the call can be captured in a CUDA graph.
Traffic: each program reads the K/V prefix it needs once per kv head; compute ~
2 * 2 * Hq * D * sum_b (start_b * len_b + len_b^2 / 2) flops.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import debug_checks, use_triton
from samgpu.kernels.visible_sdpa import plan_from_visible, visible_sdpa

LOG2E: float = 1.4426950408889634
# head_dim -> (BLOCK_M, BLOCK_N, num_warps, num_stages) for a full grid (>= 2 programs per SM) and
# for a small one (BLOCK_M halved: a 1,000-token SmolLM2 prompt is only 72 programs at 128 rows).
# At D=64 the two are one: on the H200, 128-row blocks were slower than 64-row ones on every
# admission measured, full grids included (packed refill of 16 x 250 tokens 20.2 vs 16.4 us a
# layer, 8 x 512 tokens 20.8 vs 17.1; profiling/results/20261201-h200-prefill-tiles-42c7a5b.jsonl).
LARGE_GRID_CONFIG: dict[int, tuple[int, int, int, int]] = {
    64: (64, 64, 4, 3),
    128: (128, 64, 8, 2),
}
SMALL_GRID_CONFIG: dict[int, tuple[int, int, int, int]] = {64: (64, 64, 4, 3), 128: (64, 64, 4, 2)}

_INT_ARGS = (
    "stride_qb stride_qt stride_qh stride_kb stride_kh stride_kl stride_vb stride_vh stride_vl "
    "stride_ob stride_ot stride_oh stride_sb num_tokens group"
).split()


@triton.jit
def _prefill_block(q, k, v, visible, m_i, l_i, acc, qk_scale, MASKED: tl.constexpr):
    """One key block of the online softmax. Unmasked blocks come after a row's first visible key;
    in a masked block a row may see no key yet (its segment starts later): m stays -inf there and
    the row's terms are kept at zero instead of exp2(-inf - -inf) = NaN."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    if MASKED:
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
    else:
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["num_tokens", "group"])
def _prefill_attention_kernel(
    q_ptr,  # [B, T, Hq, D] fp32/bf16/fp16
    k_ptr,  # [B, Hkv, L, D] same dtype (one layer of the cache)
    v_ptr,  # [B, Hkv, L, D] same dtype
    start_ptr,  # [B] int32: cache slot of token 0
    lengths_ptr,  # [B] int32: real tokens of the chunk
    segment_ptr,  # [B, T] int32: column of each token's segment start (PACKED only)
    out_ptr,  # [B, T, Hq, D] same dtype as q (out)
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_ob,
    stride_ot,
    stride_oh,
    stride_sb,  # segment_start's row stride (PACKED only)
    num_tokens,  # T
    group,  # Hq // Hkv
    qk_scale,  # softmax scale * log2(e)
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_M: tl.constexpr,  # query rows (token x q head of the group) per program
    BLOCK_N: tl.constexpr,  # keys per inner iteration
    PACKED: tl.constexpr,  # segment_ptr given: rows hold packed prompts
):
    """Grid (cdiv(T * group, BLOCK_M), Hkv, B): one program per (row block, kv head, sequence).
    Head-dim stride is 1 for q, k, v and out."""
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)

    start = tl.load(start_ptr + b).to(tl.int32)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    length = tl.minimum(length, num_tokens)
    first_row = pid_m * BLOCK_M
    rows = first_row + tl.arange(0, BLOCK_M)
    tok = rows // group
    head = kvh * group + rows % group
    row_in = tok < num_tokens
    row_real = tok < length
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = q_ptr + b * stride_qb + tok[:, None] * stride_qt + head[:, None] * stride_qh
    q = tl.load(q_ptrs + offs_d[None, :], mask=row_real[:, None] & d_ok[None, :], other=0.0)
    qpos = start + tok  # logical position = cache slot of each row's token

    # Keys [lo_hi, start + tok_first] are visible to every row of the block (lo_hi: the last
    # row's segment start); the keys before (back to the first row's segment start) and the band
    # up to start + tok_last need masks. No real row: every loop is empty.
    tok_first = first_row // group
    tok_last = tl.minimum((first_row + BLOCK_M - 1) // group, length - 1)
    has_rows = tok_last >= tok_first
    full_hi = tl.where(has_rows, (start + tok_first + 1) // BLOCK_N * BLOCK_N, 0)
    band_hi = tl.where(has_rows, start + tok_last + 1, 0)
    if PACKED:
        seg_base = segment_ptr + b * stride_sb
        seg = start + tl.load(seg_base + tok, mask=row_real, other=0)  # each row's first key
        lo = (start + tl.load(seg_base + tok_first, mask=has_rows, other=0)) // BLOCK_N * BLOCK_N
        lo_hi = start + tl.load(seg_base + tl.maximum(tok_last, 0), mask=has_rows, other=0)
        lo_hi = tl.cdiv(lo_hi, BLOCK_N) * BLOCK_N
        straddles = lo_hi >= full_hi  # no key block is seen whole by every row
        lo_hi = tl.where(straddles, lo, lo_hi)
        full_hi = tl.where(straddles, lo, full_hi)
    else:
        seg = tl.zeros([BLOCK_M], dtype=tl.int32)
        lo = 0
        lo_hi = 0

    k_base = k_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_ptr + b * stride_vb + kvh * stride_vh
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for kstart in range(lo, lo_hi, BLOCK_N):  # PACKED only: keys before some rows' segment
        pos = kstart + offs_n
        kv_mask = d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + pos[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0)
        visible = (pos[None, :] >= seg[:, None]) & (pos[None, :] <= qpos[:, None])
        m_i, l_i, acc = _prefill_block(q, k, v, visible, m_i, l_i, acc, qk_scale, MASKED=True)
    for kstart in range(lo_hi, full_hi, BLOCK_N):
        pos = kstart + offs_n
        kv_mask = d_ok[None, :]  # constant-true (folded) unless D is padded to BLOCK_D
        k = tl.load(k_base + pos[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + pos[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0)
        m_i, l_i, acc = _prefill_block(q, k, v, None, m_i, l_i, acc, qk_scale, MASKED=False)
    for kstart in range(full_hi, band_hi, BLOCK_N):
        pos = kstart + offs_n
        kv_mask = (pos < band_hi)[:, None] & d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + pos[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0)
        visible = (pos[None, :] >= seg[:, None]) & (pos[None, :] <= qpos[:, None])
        m_i, l_i, acc = _prefill_block(q, k, v, visible, m_i, l_i, acc, qk_scale, MASKED=True)

    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    acc = tl.where(row_real[:, None], acc, 0.0)  # pad rows write zeros
    o_ptrs = out_ptr + b * stride_ob + tok[:, None] * stride_ot + head[:, None] * stride_oh
    tl.store(
        o_ptrs + offs_d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=row_in[:, None] & d_ok[None, :],
    )


def _aot_specs() -> list[AotSpec]:
    # NOTE: fp32's IEEE dot compiles to FMA loops (slow to compile): checked for D=64 at the small
    # config only; bf16 (the serving dtype; fp16 shares its code path) for every default config.
    specs = []
    for dtype, head_dims in (("fp32", (64,)), ("bf16", (64, 128))):
        ptr = f"*{dtype}"
        sig = {
            "q_ptr": ptr,
            "k_ptr": ptr,
            "v_ptr": ptr,
            "start_ptr": "*i32",
            "lengths_ptr": "*i32",
            "segment_ptr": "*i32",
            "out_ptr": ptr,
            **dict.fromkeys(_INT_ARGS, "i32"),
            "qk_scale": "fp32",
        }
        for head_dim in head_dims:
            configs = {SMALL_GRID_CONFIG[head_dim]}
            if dtype != "fp32":
                configs.add(LARGE_GRID_CONFIG[head_dim])
            for block_m, block_n, num_warps, _ in sorted(configs):
                for packed in (False, True):
                    consts = {
                        "HEAD_DIM": head_dim,
                        "BLOCK_D": head_dim,
                        "BLOCK_M": block_m,
                        "BLOCK_N": block_n,
                        "PACKED": packed,
                    }
                    full_sig = {**sig, **dict.fromkeys(consts, "constexpr")}
                    specs.append(AotSpec(_prefill_attention_kernel, full_sig, consts, num_warps))
    return specs


AOT_SPECS = _aot_specs()


def check_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor,
    lengths: torch.Tensor,
    segment_start: torch.Tensor | None = None,
) -> tuple[int, int, int, int, int]:
    if q.dim() != 4:
        raise ValueError(f"prefill_attention: q must be [B, T, Hq, D], got {tuple(q.shape)}")
    b, t, hq, d = q.shape
    if k_cache.dim() != 4 or k_cache.shape[0] < b or k_cache.shape[3] != d:
        raise ValueError(
            f"prefill_attention: k_cache must be [B>={b}, Hkv, L, D={d}], "
            f"got {tuple(k_cache.shape)}"
        )
    if v_cache.shape != k_cache.shape:
        raise ValueError(
            f"prefill_attention: v_cache {tuple(v_cache.shape)} != k_cache {tuple(k_cache.shape)}"
        )
    hkv = k_cache.shape[1]
    if hq % hkv != 0:
        raise ValueError(f"prefill_attention: Hq={hq} is not a multiple of Hkv={hkv}")
    for name, x in (("start", start), ("lengths", lengths)):
        if x.dim() != 1 or x.shape[0] < b or x.dtype != torch.int32:
            raise ValueError(
                f"prefill_attention: {name} must be [B>={b}] int32, got {tuple(x.shape)} {x.dtype}"
            )
    if q.dtype != k_cache.dtype or q.dtype != v_cache.dtype:
        raise ValueError(
            f"prefill_attention: q {q.dtype}, k_cache {k_cache.dtype}, "
            f"v_cache {v_cache.dtype} differ"
        )
    if t > k_cache.shape[2]:
        raise ValueError(f"prefill_attention: T={t} exceeds the cache length L={k_cache.shape[2]}")
    if segment_start is not None and (
        segment_start.dim() != 2
        or segment_start.shape[0] < b
        or segment_start.shape[1] < t
        or segment_start.stride(1) != 1
        or segment_start.dtype != torch.int32
    ):
        raise ValueError(
            f"prefill_attention: segment_start must be [B>={b}, T>={t}] int32 (contiguous rows), "
            f"got {tuple(segment_start.shape)} {segment_start.dtype}"
        )
    if debug_checks():
        if segment_start is not None:
            seg = segment_start[:b, :t].long()
            cols = torch.arange(t, device=seg.device)
            if bool((seg < 0).any() | (seg > cols).any() | (seg.diff(dim=1) < 0).any()):
                raise ValueError(
                    "prefill_attention: segment_start must be non-decreasing with "
                    f"0 <= segment_start[b, t] <= t: {segment_start[:b, :t]}"
                )
        if bool((lengths[:b] < 0).any() | (lengths[:b] > t).any()):
            raise ValueError(f"prefill_attention: lengths outside [0, T={t}]: {lengths[:b]}")
        if bool(((start[:b] < 0) | (start[:b] + lengths[:b] > k_cache.shape[2])).any()):
            raise ValueError(
                f"prefill_attention: start + lengths beyond L={k_cache.shape[2]}: "
                f"start {start[:b]}, lengths {lengths[:b]}"
            )
    return b, t, hq, hkv, d


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_config(
    b: int, t: int, hq: int, hkv: int, d: int, device: torch.device
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): at D=128 128-row blocks when they give >= 2
    programs per SM, else 64-row blocks (more programs for short prompts / small batches); at D=64
    64-row blocks always."""
    key = 64 if d <= 64 else 128
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        big = LARGE_GRID_CONFIG[key]
        if triton.cdiv(t * (hq // hkv), big[0]) * hkv * b >= 2 * _sm_count(index):
            return big
    return SMALL_GRID_CONFIG[key]


def prefill_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor,
    lengths: torch.Tensor,
    segment_start: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Launch the kernel. Shapes as in the module docstring; `scale` defaults to 1/sqrt(D). The
    configuration defaults to `default_config`; each of its four values can be overridden (powers
    of two, block_m and block_n >= 16)."""
    b, t, hq, hkv, d = check_inputs(q, k_cache, v_cache, start, lengths, segment_start)
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(
            f"prefill_attention: out must be {tuple(q.shape)} {q.dtype}, "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if x.stride(-1) != 1:
            raise ValueError(
                f"prefill_attention: {name} needs a contiguous last dim, strides {x.stride()}"
            )
    if b == 0 or t == 0:
        return out
    cfg = default_config(b, t, hq, hkv, d, q.device)
    block_m = cfg[0] if block_m is None else block_m
    block_n = cfg[1] if block_n is None else block_n
    num_warps = cfg[2] if num_warps is None else num_warps
    num_stages = cfg[3] if num_stages is None else num_stages
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"prefill_attention: {name}={value} is not a power of two >= 16")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    group = hq // hkv
    grid = (triton.cdiv(t * group, block_m), hkv, b)
    _prefill_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        start,
        lengths,
        lengths if segment_start is None else segment_start,  # (not read unless PACKED)
        out,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        0 if segment_start is None else segment_start.stride(0),
        t,
        group,
        scale * LOG2E,
        HEAD_DIM=d,
        BLOCK_D=triton.next_power_of_2(max(d, 16)),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PACKED=segment_start is not None,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def prefill_visible(
    start: torch.Tensor,
    lengths: torch.Tensor,
    num_tokens: int,
    max_len: int,
    segment_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Visibility `[B, T, L] bool`: query t of sequence b sees slot p iff t < lengths[b] and
    start[b] + segment_start[b, t] <= p <= start[b] + t (segment_start None: 0)."""
    t = torch.arange(num_tokens, device=start.device)
    p = torch.arange(max_len, device=start.device)
    last = start[:, None].to(torch.int64) + t[None, :]  # [B, T] position of each query
    real = t[None, :] < lengths[:, None].to(torch.int64)
    visible = (p[None, None, :] <= last[:, :, None]) & real[:, :, None]
    if segment_start is not None:
        first = start[:, None].to(torch.int64) + segment_start[:, :num_tokens].to(torch.int64)
        visible &= p[None, None, :] >= first[:, :, None]
    return visible


def _is_plain_causal(
    start: torch.Tensor, lengths: torch.Tensor, num_tokens: int, segment_start=None
) -> bool:
    """Every row starts at slot 0 and fills all T columns with one prompt (one prompt, or prompts
    of one length): the visibility is SDPA's own causal mask over slots [0, T). Host reads, as
    the reference's."""
    if segment_start is not None and bool(segment_start[:, :num_tokens].any()):
        return False
    return num_tokens > 0 and not bool(start.any()) and bool((lengths == num_tokens).all())


def _causal_sdpa(q, k_cache, v_cache, *, scale: float | None, upcast: bool) -> torch.Tensor:
    """The reference for a plain causal prefill: SDPA's is_causal path (transformers' own for one
    prompt), which builds no [B, T, L] mask; on a CPU ~10% of a 768-token prefill of SmolLM2."""
    b, t = q.shape[0], q.shape[1]
    dtype = torch.float32 if upcast else q.dtype
    qh = q.transpose(1, 2).to(dtype)  # [B, Hq, T, D]
    kh, vh = k_cache[:b, :, :t].to(dtype), v_cache[:b, :, :t].to(dtype)
    attn = torch.nn.functional.scaled_dot_product_attention(
        qh, kh, vh, is_causal=True, scale=scale, enable_gqa=q.shape[2] != kh.shape[1]
    )
    return attn.transpose(1, 2).to(q.dtype)


def prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor,
    lengths: torch.Tensor,
    segment_start: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """SDPA with an explicit visibility mask (`prefill_visible`) over the slots some query sees
    (kernels/visible_sdpa.py; the spec, also the CPU path), or SDPA's causal mask when that is
    the visibility (`_is_plain_causal`). `upcast=True` computes in float32 (the yardstick for
    low-precision kernels).
    Memory traffic of the kernel it specifies: K/V of slots [0, start + len) once per kv head and
    row block; q read and out written once: ~2 * B * Hkv * (start + T) * D * bytes."""
    b, t, _, _, _ = check_inputs(q, k_cache, v_cache, start, lengths, segment_start)
    seg = None if segment_start is None else segment_start[:b]
    if _is_plain_causal(start[:b], lengths[:b], t, seg):
        result = _causal_sdpa(q, k_cache, v_cache, scale=scale, upcast=upcast)
    else:
        visible = prefill_visible(start[:b], lengths[:b], t, k_cache.shape[2], seg)
        plan = plan_from_visible(visible)
        result = visible_sdpa(q, k_cache, v_cache, plan, scale=scale, upcast=upcast)
    if out is None:
        return result.contiguous()
    return out.copy_(result)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor,
    lengths: torch.Tensor,
    segment_start: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch: the Triton kernel for CUDA tensors, the SDPA reference otherwise."""
    args = (q, k_cache, v_cache, start, lengths, segment_start)
    if use_triton(q):
        return prefill_attention_triton(*args, scale=scale, out=out)
    return prefill_attention_ref(*args, scale=scale, out=out)
