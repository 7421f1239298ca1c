"""Tree attention for the verify step: each draft node attends to its sequence's cached prefix and
to its own ancestors in the draft tree (itself included).

Layout (one layer): queries `q [B, N, Hq, D]` (the q projection viewed per head, no transpose), one
layer of the static cache `k_cache, v_cache [B, Hkv, L, D]` in which the N nodes' keys/values are
already written at positions `cache_len[b] + j`, `cache_len [B] int32`, `tree_mask [B, N, N] bool`
(mask[b, i, j]: node j is an ancestor of node i or i itself). Output `out [B, N, Hq, D]`.
Query (b, i, h) sees key position p of kv head h // (Hq / Hkv) iff
    p < cache_len[b]                                    (the committed prefix), or
    p = cache_len[b] + j with 0 <= j < N and tree_mask[b, i, j]   (its tree ancestors).
A query that sees nothing (only possible for a pad row with an empty mask and an empty cache)
outputs zeros.

Example: cache_len = 2, tree parents [-1, 0, 0] (root r, children a and x), mask rows
0:{0} 1:{0,1} 2:{0,2}: query a sees cache positions {0, 1, 2 (r), 3 (a)}, never 4 (x).

Kernel: one program per (block of BLOCK_M query rows, kv head, sequence). The rows of a program
are the (q head of the kv head's group, node) pairs flattened as row = g * N + i, so GQA groups
share one pass over K/V. Two loops over key blocks of BLOCK_N: the prefix [0, cache_len)
(data-dependent trip count, no mask load) and the tree part [cache_len, cache_len + N) (mask
loaded per block). Online softmax in fp32 (exp2 with log2(e) folded into the scale), with a guard
so that fully masked blocks never make NaNs. Reads K/V once per kv head: memory traffic
~ 2 * B * Hkv * (cache_len + N) * D * bytes.

Split-KV (flash-decoding) for the few-query case: with few programs (B * Hkv * row blocks below
a few waves of the GPU) each (row block, kv head, sequence) cuts its prefix into chunks of whole
key blocks, one program each; the last split also takes the tree part. The chunk is the batch's
longest prefix over `num_splits` (computed in the kernel from cache_len, so the grid is static and
graph-safe): in a ragged batch the longest sequences take every split and shorter ones fewer, so
no program reads more than one chunk (a launch of one wave waits for its slowest program). Each
writes its unnormalised partial (acc, running max m, sum l) to an fp32 workspace and
`_tree_attention_combine_kernel` merges them: out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s.

RoPE prologue (ROPE, the verify step's path through kernels/rope_tree_attention.py): q points at
the fused QKV rows; q and the nodes' k are rotated as they load (rope_kv's helper: its bits),
the tree part attends to those k and v in registers, in blocks of ROPE_TREE_BLOCK keys (block_n
then sets the prefix's blocks only), and row block 0 of the last split writes them to the cache
at slot[b] + j, which no prefix loop reads (cache_len <= slot).

Configuration (`tree_attention_triton` keywords, all optional): block_m (rows per program, default
next power of two >= group * N, at least 16 for the tensor-core dot, at most 64), block_n (keys per
iteration), num_splits, num_warps, num_stages; defaults from kernels/tree_attention_config.py
(the card's tuned table, else a heuristic aiming at ~4 programs per SM). Counts are runtime
values (`do_not_specialize`) and strides are fixed by the cache layout, so a new N, B or cache
length never recompiles.

CPU path (`tree_attention_ref`): SDPA with the visibility mask (`step_plan`: once per step).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.rope_kv import rope_rows, rope_table
from samgpu.kernels.tree_attention_config import (
    BLOCK_N,
    MAX_SPLITS,
    max_block_m,
    resolve_config,
)
from samgpu.kernels.visible_sdpa import RefPlan, plan_from_visible, visible_sdpa

LOG2E: float = 1.4426950408889634


_INT_ARGS = (
    "stride_qb stride_qn stride_qh stride_kb stride_kh stride_kl stride_vb stride_vh stride_vl "
    "stride_mb stride_mi stride_ob stride_on stride_oh num_seqs num_nodes group num_heads "
    "num_splits"
).split()
_COMBINE_INT_ARGS = "stride_ob stride_on stride_oh num_nodes num_heads num_splits".split()
# Strides stay specialised (Triton's divisible-by-16 hint lets K/V loads vectorise); they are fixed
# by the cache layout and the tree width, so this never recompiles during a run. The counts vary.
_VARYING = ["num_seqs", "num_nodes", "group", "num_heads", "num_splits"]
# Tree keys per iteration with the RoPE prologue: its rotation holds ~6 tiles of [keys, D] live,
# which at 64 keys spilled registers for the whole kernel.
ROPE_TREE_BLOCK: int = 16
BLOCK_B: int = 256  # cache_len entries read per load when taking the batch's longest prefix


@triton.jit(do_not_specialize=_VARYING)
def _tree_attention_kernel(
    q_ptr,  # [B, N, Hq, D] fp32/bf16/fp16
    k_ptr,  # [B, Hkv, L, D] same dtype (one layer of the cache)
    v_ptr,  # [B, Hkv, L, D] same dtype
    cache_len_ptr,  # [B] int32
    mask_ptr,  # [B, N, N] uint8 view of the bool tree mask
    out_ptr,  # [B, N, Hq, D] same dtype as q (out, when not SPLIT)
    ws_acc_ptr,  # [B, N, Hq, S, D] fp32 unnormalised partial outputs (out, when SPLIT)
    ws_m_ptr,  # [B, N, Hq, S] fp32 running max, log2 domain (out, when SPLIT)
    ws_l_ptr,  # [B, N, Hq, S] fp32 softmax denominators (out, when SPLIT)
    cos_ptr,  # [B, N, D / 2] fp32 RoPE table of each node (ROPE)
    sin_ptr,  # [B, N, D / 2] fp32 (ROPE)
    slot_ptr,  # [B] int32: cache slot of node 0, where the nodes' K/V are written (ROPE)
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_mb,
    stride_mi,
    stride_ob,
    stride_on,
    stride_oh,
    num_seqs,  # B
    num_nodes,  # N
    group,  # Hq // Hkv
    num_heads,  # Hq
    num_splits,  # S (1 when not SPLIT)
    qk_scale,  # softmax scale * log2(e)
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_M: tl.constexpr,  # rows (q head of the group x node) per program
    BLOCK_N: tl.constexpr,  # keys per iteration
    SPLIT: tl.constexpr,  # write partials to the workspace instead of the output
    BLOCK_B: tl.constexpr,  # cache_len entries per load (the batch's longest prefix, SPLIT)
    ROPE: tl.constexpr,  # q_ptr is the fused QKV row [B, N, (Hq + 2 Hkv) * D]: rotate here
    BLOCK_T: tl.constexpr,  # tree keys per iteration
):
    """Grid (cdiv(group * N, BLOCK_M), Hkv * S, B). Head-dim stride is 1 for q, k, v and out.
    ROPE: q and the nodes' k are rotated from the QKV rows as they load (rope_kv's rounding), the
    tree part attends to the rotated k and plain v in registers, and row block 0 of the last split
    stores them at slot_ptr[b] + j (the prefix loop never reads those slots: no race)."""
    pid_m = tl.program_id(0)
    kvh = (tl.program_id(1) // num_splits).to(tl.int64)
    split = tl.program_id(1) % num_splits
    b = tl.program_id(2).to(tl.int64)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < group * num_nodes
    node = rows % num_nodes
    head = kvh * group + rows // num_nodes
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = q_ptr + b * stride_qb + node[:, None] * stride_qn + head[:, None] * stride_qh
    q_mask = row_ok[:, None] & d_ok[None, :]
    if ROPE:
        row_cos, row_sin = rope_table(
            cos_ptr,
            sin_ptr,
            b * num_nodes + node,
            offs_d,
            q_mask,
            q_ptr.dtype.element_ty,
            HEAD_DIM,
            True,
        )
        q = rope_rows(q_ptrs, row_cos, row_sin, q_mask, offs_d, HEAD_DIM)
    else:
        q = tl.load(q_ptrs + offs_d[None, :], mask=q_mask, other=0.0)

    cache_len = tl.load(cache_len_ptr + b).to(tl.int32)
    k_base = k_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_ptr + b * stride_vb + kvh * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)

    # This split's share of the prefix: [lo, hi), whole blocks of a chunk sized by the batch's
    # longest prefix (one split: [0, cache_len)).
    span = cache_len
    if SPLIT:
        offs_b = tl.arange(0, BLOCK_B)
        lens = tl.load(cache_len_ptr + offs_b, mask=offs_b < num_seqs, other=0)
        span = tl.max(lens.to(tl.int32), axis=0)
        for i in range(BLOCK_B, num_seqs, BLOCK_B):
            lens = tl.load(cache_len_ptr + i + offs_b, mask=i + offs_b < num_seqs, other=0)
            span = tl.maximum(span, tl.max(lens.to(tl.int32), axis=0))
    chunk = tl.cdiv(tl.cdiv(span, num_splits), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, cache_len)
    # Prefix: every row sees every position < cache_len, so each block has a finite entry per row.
    for start in range(lo, hi, BLOCK_N):
        pos = start + offs_n
        key_ok = pos < hi
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + pos[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    # Tree nodes at cache_len + j, visible per tree_mask[b, node, j] (the last split only).
    m_base = mask_ptr + b * stride_mb + node[:, None] * stride_mi
    tree_hi = tl.where(split == num_splits - 1, num_nodes, 0)
    for start in range(0, tree_hi, BLOCK_T):
        j = start + tl.arange(0, BLOCK_T)
        j_ok = j < num_nodes
        kv_mask = j_ok[:, None] & d_ok[None, :]
        if ROPE:
            # rows of qkv: [q heads | k heads | v heads], each HEAD_DIM wide
            node_rows = q_ptr + b * stride_qb + j[:, None] * stride_qn
            k_src = node_rows + (num_heads + kvh) * HEAD_DIM
            key_cos, key_sin = rope_table(
                cos_ptr,
                sin_ptr,
                b * num_nodes + j,
                offs_d,
                kv_mask,
                q_ptr.dtype.element_ty,
                HEAD_DIM,
                True,
            )
            k = rope_rows(k_src, key_cos, key_sin, kv_mask, offs_d, HEAD_DIM)
            v_src = node_rows + (num_heads + num_heads // group + kvh) * HEAD_DIM
            v = tl.load(v_src + offs_d[None, :], mask=kv_mask, other=0.0)
            slot = tl.load(slot_ptr + b).to(tl.int64) + j
            store = kv_mask & ((j * 0 + pid_m) == 0)[:, None]  # (3.9 interpreter: no scalar)
            tl.store(k_base + slot[:, None] * stride_kl + offs_d[None, :], k, mask=store)
            tl.store(v_base + slot[:, None] * stride_vl + offs_d[None, :], v, mask=store)
        else:
            pos = cache_len + j
            k_ptrs = k_base + pos[:, None] * stride_kl + offs_d[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v_ptrs = v_base + pos[:, None] * stride_vl + offs_d[None, :]
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        vis = tl.load(m_base + j[None, :], mask=row_ok[:, None] & j_ok[None, :], other=0) != 0
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with nothing visible so far keeps m = -inf: subtract 0 instead (no inf - inf).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    if SPLIT:
        # Partial of (b, node, head, split); contiguous workspace [B, N, Hq, S, (D)].
        part = ((b * num_nodes + node) * num_heads + head) * num_splits + split
        tl.store(ws_m_ptr + part, m_i, mask=row_ok)
        tl.store(ws_l_ptr + part, l_i, mask=row_ok)
        a_ptrs = ws_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(a_ptrs, acc, mask=row_ok[:, None] & d_ok[None, :])
    else:
        acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = out_ptr + b * stride_ob + node[:, None] * stride_on + head[:, None] * stride_oh
        tl.store(
            o_ptrs + offs_d[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_ok[None, :],
        )


@triton.jit(do_not_specialize=["num_nodes", "num_heads", "num_splits"])
def _tree_attention_combine_kernel(
    ws_acc_ptr,  # [B, N, Hq, S, D] fp32
    ws_m_ptr,  # [B, N, Hq, S] fp32
    ws_l_ptr,  # [B, N, Hq, S] fp32
    out_ptr,  # [B, N, Hq, D] (out)
    stride_ob,
    stride_on,
    stride_oh,
    num_nodes,  # N
    num_heads,  # Hq
    num_splits,  # S
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,  # power of two >= S
):
    """Grid (B * N, Hq): merge the S partials of one (sequence, node, head)."""
    bn = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    b = bn // num_nodes
    node = bn % num_nodes
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    part = (bn * num_heads + head) * num_splits + offs_s
    m = tl.load(ws_m_ptr + part, mask=s_ok, other=float("-inf"))
    l_s = tl.load(ws_l_ptr + part, mask=s_ok, other=0.0)
    acc = tl.load(
        ws_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    m_max = tl.max(m, axis=0)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_safe)  # 0 for empty splits (m = -inf)
    denom = tl.sum(w * l_s, axis=0)
    res = tl.sum(w[:, None] * acc, axis=0) / tl.where(denom == 0.0, 1.0, denom)
    o_ptrs = out_ptr + b * stride_ob + node * stride_on + head * stride_oh + offs_d
    tl.store(o_ptrs, res.to(out_ptr.dtype.element_ty), mask=d_ok)


def _aot_specs() -> list[AotSpec]:
    # NOTE: compiles are slow (fp32's IEEE dot is FMA loops), so the CI check covers each constexpr
    # combination the defaults use once: bf16 (the serving dtype; fp16 shares its code path) for
    # both head dims, every default block_m (16 decode/chains, 64, 256 big trees), split or not,
    # with the RoPE prologue (what the runner launches); the plain kernel and fp32 for the default
    # model's head_dim, block 16, unsplit.
    specs = []
    for dtype, head_dims in (("fp32", (64,)), ("bf16", (64, 128))):
        ptr = f"*{dtype}"
        sig = {
            "q_ptr": ptr,
            "k_ptr": ptr,
            "v_ptr": ptr,
            "cache_len_ptr": "*i32",
            "mask_ptr": "*u8",
            "out_ptr": ptr,
            "ws_acc_ptr": "*fp32",
            "ws_m_ptr": "*fp32",
            "ws_l_ptr": "*fp32",
            "cos_ptr": "*fp32",
            "sin_ptr": "*fp32",
            "slot_ptr": "*i32",
            **dict.fromkeys(_INT_ARGS, "i32"),
            "qk_scale": "fp32",
        }
        combine_sig = {
            "ws_acc_ptr": "*fp32",
            "ws_m_ptr": "*fp32",
            "ws_l_ptr": "*fp32",
            "out_ptr": ptr,
            **dict.fromkeys(_COMBINE_INT_ARGS, "i32"),
        }
        for head_dim in head_dims:
            variants = [(16, False, False), (16, False, True)]
            if dtype == "bf16":
                variants += [
                    (block_m, split, True)
                    for block_m in (16, 64, max_block_m(head_dim))
                    for split in (False, True)
                    if (block_m, split) != (16, False)
                ]
            for block_m, split, rope in variants:
                consts = {
                    "HEAD_DIM": head_dim,
                    "BLOCK_D": head_dim,
                    "BLOCK_M": block_m,
                    "BLOCK_N": BLOCK_N,
                    "SPLIT": split,
                    "BLOCK_B": BLOCK_B,
                    "ROPE": rope,
                    "BLOCK_T": ROPE_TREE_BLOCK if rope else BLOCK_N,
                }
                full_sig = {**sig, **dict.fromkeys(consts, "constexpr")}
                num_warps = 4 if block_m <= 64 else 8
                specs.append(AotSpec(_tree_attention_kernel, full_sig, consts, num_warps))
            consts = {"HEAD_DIM": head_dim, "BLOCK_D": head_dim, "BLOCK_S": MAX_SPLITS}
            full_sig = {**combine_sig, **dict.fromkeys(consts, "constexpr")}
            specs.append(AotSpec(_tree_attention_combine_kernel, full_sig, consts))
    return specs


AOT_SPECS = _aot_specs()


def check_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
) -> tuple[int, int, int, int, int]:
    if q.dim() != 4:
        raise ValueError(f"tree_attention: q must be [B, N, Hq, D], got {tuple(q.shape)}")
    b, n, hq, d = q.shape
    if k_cache.dim() != 4 or k_cache.shape[0] < b or k_cache.shape[3] != d:
        raise ValueError(
            f"tree_attention: k_cache must be [B>={b}, Hkv, L, D={d}], got {tuple(k_cache.shape)}"
        )
    if v_cache.shape != k_cache.shape:
        raise ValueError(
            f"tree_attention: v_cache {tuple(v_cache.shape)} != k_cache {tuple(k_cache.shape)}"
        )
    hkv, max_len = k_cache.shape[1], k_cache.shape[2]
    if hq % hkv != 0:
        raise ValueError(f"tree_attention: Hq={hq} is not a multiple of Hkv={hkv}")
    if cache_len.shape[0] < b or cache_len.dim() != 1 or cache_len.dtype != torch.int32:
        raise ValueError(
            f"tree_attention: cache_len must be [B>={b}] int32, got "
            f"{tuple(cache_len.shape)} {cache_len.dtype}"
        )
    if tree_mask.shape != (b, n, n) or tree_mask.dtype != torch.bool:
        raise ValueError(
            f"tree_attention: tree_mask must be [B={b}, N={n}, N={n}] bool, got "
            f"{tuple(tree_mask.shape)} {tree_mask.dtype}"
        )
    if q.dtype != k_cache.dtype or q.dtype != v_cache.dtype:
        raise ValueError(
            f"tree_attention: q {q.dtype}, k_cache {k_cache.dtype}, v_cache {v_cache.dtype} differ"
        )
    if n > max_len:
        raise ValueError(f"tree_attention: N={n} nodes exceed the cache length L={max_len}")
    return b, n, hq, hkv, d


def tree_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Launch the kernel (and the combine kernel when split). Shapes as in the module docstring;
    `scale` defaults to 1/sqrt(D); configuration keywords as `resolve_config` takes them."""
    hq = check_inputs(q, k_cache, v_cache, cache_len, tree_mask)[2]
    config = (block_m, block_n, num_splits, num_warps, num_stages)
    return launch(q, None, k_cache, v_cache, cache_len, tree_mask, out, hq, scale, config)


def launch(q, rope, k_cache, v_cache, cache_len, tree_mask, out, hq, scale, config):
    """Both entry points: q [B, N, Hq, D] (a view into qkv when `rope` = (qkv, cos, sin, slot))."""
    b, n, _, d = q.shape
    hkv = k_cache.shape[1]
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype:
        got = f"{tuple(out.shape)} {out.dtype}"
        raise ValueError(f"tree_attention: out must be {tuple(q.shape)} {q.dtype}, got {got}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if t.stride(-1) != 1:
            raise ValueError(
                f"tree_attention: {name} needs a contiguous last dim, strides {t.stride()}"
            )
    if b == 0 or n == 0:
        return out
    if tree_mask.stride(2) != 1:
        tree_mask = tree_mask.contiguous()
    max_len = k_cache.shape[2]
    group = hq // hkv
    cfg = resolve_config(config, b, n, hq, hkv, d, max_len, q.device)
    block_m, block_n, num_splits, num_warps, num_stages = dataclasses.astuple(cfg)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    split = num_splits > 1
    if split:
        ws_acc = torch.empty(b, n, hq, num_splits, d, dtype=torch.float32, device=q.device)
        ws_m = torch.empty(b, n, hq, num_splits, dtype=torch.float32, device=q.device)
        ws_l = torch.empty_like(ws_m)
    else:
        ws_acc = ws_m = ws_l = out  # unused: SPLIT is a constexpr False
    cos, sin, slot = (out, out, cache_len) if rope is None else rope[1:]  # unused without ROPE
    block_d = triton.next_power_of_2(max(d, 16))
    grid = (triton.cdiv(group * n, block_m), hkv * num_splits, b)
    _tree_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        cache_len,
        tree_mask.view(torch.uint8),
        out,
        ws_acc,
        ws_m,
        ws_l,
        cos,
        sin,
        slot,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        tree_mask.stride(0),
        tree_mask.stride(1),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        b,
        n,
        group,
        hq,
        num_splits,
        scale * LOG2E,
        HEAD_DIM=d,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        SPLIT=split,
        BLOCK_B=BLOCK_B,
        ROPE=rope is not None,
        BLOCK_T=block_n if rope is None else ROPE_TREE_BLOCK,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if split:
        _tree_attention_combine_kernel[(b * n, hq)](
            ws_acc,
            ws_m,
            ws_l,
            out,
            out.stride(0),
            out.stride(1),
            out.stride(2),
            n,
            hq,
            num_splits,
            HEAD_DIM=d,
            BLOCK_D=block_d,
            BLOCK_S=triton.next_power_of_2(num_splits),
        )
    return out


def _visible_slots(cache_len: torch.Tensor, tree_mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Visibility over cache slots: `[B, N, L] bool`, True where query i may attend to slot p."""
    b, n, _ = tree_mask.shape
    pos = torch.arange(max_len, device=tree_mask.device)
    rel = pos[None, :] - cache_len[:b, None].to(torch.int64)  # [B, L]: slot - cache_len
    in_tree = (rel >= 0) & (rel < n)
    idx = rel.clamp(0, n - 1)[:, None, :].expand(b, n, max_len)
    tree_vis = torch.gather(tree_mask, 2, idx) & in_tree[:, None, :]
    return (rel < 0)[:, None, :] | tree_vis


def ref_plan(cache_len: torch.Tensor, tree_mask: torch.Tensor, max_len: int) -> RefPlan:
    """The reference's visibility for one step, shared by all layers (it depends only on cache_len
    and the tree mask)."""
    return plan_from_visible(_visible_slots(cache_len, tree_mask, max_len))


def tree_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    upcast: bool = False,
    plan: RefPlan | None = None,
) -> torch.Tensor:
    """SDPA with an explicit `[B, 1, N, W]` visibility mask over the slots some query sees (the
    spec; also the CPU path, which costs the context, not the cache's capacity). `upcast=True`
    computes in float32 (the yardstick for low-precision kernels). `plan`: ref_plan of the same
    cache_len and tree_mask, built once per step instead of once per layer."""
    check_inputs(q, k_cache, v_cache, cache_len, tree_mask)
    if plan is None:
        plan = ref_plan(cache_len, tree_mask, k_cache.shape[2])
    result = visible_sdpa(q, k_cache, v_cache, plan, scale=scale, upcast=upcast)
    if out is None:
        return result.contiguous()
    return out.copy_(result)


def step_plan(
    cache_len: torch.Tensor, tree_mask: torch.Tensor, k_cache: torch.Tensor
) -> RefPlan | None:
    """What `tree_attention(..., plan=)` takes for one step's layers: the reference's RefPlan
    where the reference runs, None where the Triton kernel does (it needs none)."""
    if use_triton(k_cache):
        return None
    return ref_plan(cache_len, tree_mask, k_cache.shape[-2])


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    plan: RefPlan | None = None,
) -> torch.Tensor:
    """Dispatch: the Triton kernel for CUDA tensors, the SDPA reference otherwise (`plan`: the
    step's step_plan, for the reference)."""
    if use_triton(q):
        return tree_attention_triton(
            q, k_cache, v_cache, cache_len, tree_mask, scale=scale, out=out
        )
    return tree_attention_ref(
        q, k_cache, v_cache, cache_len, tree_mask, scale=scale, out=out, plan=plan
    )
