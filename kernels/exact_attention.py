"""Exact (batch- and tree-invariant) attention for exact mode (issue 15): the output for a query is
a function of its q and of the keys/values at its logical positions alone, bit for bit, whatever
B, N or T, the slot, the batch mates, how its context splits into cache and tree, or the entry
point (prefill chunk, one-token decode, tree verify).

Logical positions (`samgpu.kernels.exact_plan`): query (b, i) attends to logical positions
0 .. num_keys - 1; the tree form (`exact_attention`, inputs as `tree_attention`) puts the prefix at
its slots and a node's ancestors, depth by depth (itself last), after it: exactly the sequence it
would see decoded alone after its ancestors were appended to the cache; the chain / prefill form
(`exact_prefill_attention`, inputs as `prefill_attention`) sees slots 0 .. start + t.

Fixed reduction order. Each query row reduces over its keys in blocks of BLOCK_N logical positions
aligned to logical 0, in increasing order, with an fp32 online softmax (exp2, log2(e) folded into
the scale). Split-KV happens only at fixed logical boundaries (every SPLIT_TOKENS positions,
independent of B, N, T and the cache capacity); `_exact_attention_combine_kernel` merges a row's
splits sequentially in increasing order. A block past a row's last key leaves its state bit-for-bit
unchanged (p = 0, alpha = 1 or a guarded 0), so batch mates that reach further do not perturb it.

Why the bits cannot depend on the batch. One compiled binary serves every call of a run: all
runtime arguments are `do_not_specialize` (pointers included: no alignment variants), and the
constexprs (`exact_config`: rows per program, BLOCK_N, SPLIT_TOKENS, num_warps; num_stages=1)
depend on the model's heads and head_dim only. Inside it, a row's arithmetic sees only its own q,
its own keys' values and its own mask, the same way whatever the row's position: the scores
q . k and the weighted sums sum_j p_j v_j are fp32 `tl.dot(..., input_precision="ieee")` on
fp32 operands, which Triton lowers to FMA loops on the CUDA cores: each output element is one
thread's chain of fma over the reduced axis, in index order, from zero (bf16 products are exact in
fp32). Row maxima are exact; the row sums of p are one `tl.sum` tree, the same for every row. No
tensor cores by default: MMA rounding may depend on tile shape and instruction, which the
interpreter cannot reveal (`tensor_cores=True` is an opt-in variant that
profiling/bench_attention.py checks on the real GPU). Blocks that every row of the program sees
at its own slot load one shared K/V tile; blocks that reach into a tree (per-node slots) load one
tile per query of the program, evaluate the same expressions on it and select that query's rows.
tests/kernels/test_exact_attention.py checks on the sm_90 TTGIR that both loops compile to the
same reductions and dots, each accumulating from zero (Triton otherwise folds `acc * alpha +` into
the shared loop's dot: other rounding, other bits).

Kernel: one program per (sequence, block of NODES queries, kv head, split); rows are
(query, q head of the group) pairs, row = node_local * BLOCK_G + g, so the group's heads share the
K/V loads and a tree's nodes share the prefix tiles. Workspace [B, N, Hq, S, D] fp32 (+ m, l) with
S = cdiv(L, SPLIT_TOKENS); the combine kernel reads only a row's cdiv(num_keys, SPLIT_TOKENS)
splits. Cost: the same K/V bytes as tree_attention for the prefix (per block of NODES queries),
plus fp32 CUDA-core math instead of tensor cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.exact_plan import ExactPlan, exact_chain_plan, exact_tree_plan
from samgpu.kernels.prefill_attention import check_inputs as check_prefill_inputs
from samgpu.kernels.prefill_attention import prefill_attention_ref
from samgpu.kernels.tree_attention import check_inputs as check_tree_inputs
from samgpu.kernels.tree_attention import tree_attention_ref

LOG2E: float = 1.4426950408889634
SPLIT_TOKENS: int = 256  # logical positions per split: a constant of the whole run, never of B/N
ROWS: int = 16  # query rows (query x q head) per program
_NO_TREE = tl.constexpr(1 << 30)  # shared-tile bound of a program whose rows have no tree keys

_ARGS = (
    "q_ptr k_ptr v_ptr num_keys_ptr prefix_len_ptr anc_ptr ws_acc_ptr ws_m_ptr ws_l_ptr "
    "stride_qb stride_qn stride_qh stride_kb stride_kh stride_kl stride_vb stride_vh stride_vl "
    "stride_ab stride_an num_nodes group num_heads num_splits qk_scale"
).split()
_COMBINE_ARGS = (
    "num_keys_ptr ws_acc_ptr ws_m_ptr ws_l_ptr out_ptr stride_ob stride_on stride_oh "
    "num_nodes num_heads num_splits"
).split()


@dataclass(frozen=True)
class ExactConfig:
    block_g: int  # q heads per query, padded to a power of two
    nodes: int  # queries per program
    block_n: int  # logical positions per block
    split_tokens: int  # logical positions per split
    num_warps: int
    tensor_cores: bool


def exact_config(group: int, head_dim: int, *, tensor_cores: bool = False) -> ExactConfig:
    """The constexprs of a run: a function of the model's heads and head_dim only."""
    block_g = triton.next_power_of_2(group)
    rows = max(ROWS, block_g)
    # FMA dots stage fp32 operands in shared memory: smaller key blocks for the wider heads.
    block_n = 64 if tensor_cores else (32 if head_dim <= 64 else 16)
    return ExactConfig(block_g, rows // block_g, block_n, SPLIT_TOKENS, 4, tensor_cores)


@triton.jit(do_not_specialize=_ARGS)
def _exact_attention_kernel(
    q_ptr,  # [B, N, Hq, D] fp32/bf16/fp16
    k_ptr,  # [B, Hkv, L, D] same dtype (one layer of the cache)
    v_ptr,  # [B, Hkv, L, D] same dtype
    num_keys_ptr,  # [B, N] int32 (contiguous)
    prefix_len_ptr,  # [B, N] int32 (contiguous)
    anc_ptr,  # [B, N, A] int32 (last dim contiguous)
    ws_acc_ptr,  # [B, N, Hq, S, D] fp32 unnormalised partial outputs (out)
    ws_m_ptr,  # [B, N, Hq, S] fp32 running max, log2 domain (out)
    ws_l_ptr,  # [B, N, Hq, S] fp32 softmax denominators (out)
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_ab,
    stride_an,
    num_nodes,  # N (or T)
    group,  # Hq // Hkv
    num_heads,  # Hq
    num_splits,  # S = cdiv(L, SPLIT_TOKENS)
    qk_scale,  # softmax scale * log2(e)
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_G: tl.constexpr,  # next power of two >= group
    NODES: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # logical positions per block
    SPLIT_TOKENS: tl.constexpr,  # logical positions per split (a multiple of BLOCK_N)
    TENSOR_CORES: tl.constexpr,  # tensor-core dots (opt-in; see the module docstring)
):
    """Grid (B * cdiv(N, NODES), Hkv, S): one program per (sequence, NODES queries, kv head,
    split). Head-dim stride is 1 for q, k, v."""
    ROWS_: tl.constexpr = NODES * BLOCK_G
    node_blocks = tl.cdiv(num_nodes, NODES)
    b = (tl.program_id(0) // node_blocks).to(tl.int64)
    first_node = (tl.program_id(0) % node_blocks) * NODES
    kvh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)

    rows = tl.arange(0, ROWS_)
    local = rows // BLOCK_G
    g = rows % BLOCK_G
    node = first_node + local
    head = kvh * group + g
    row_ok = (g < group) & (node < num_nodes)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptrs = q_ptr + b * stride_qb + node[:, None] * stride_qn + head[:, None] * stride_qh
    q = tl.load(q_ptrs + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    qf = q.to(tl.float32)

    nk = tl.load(num_keys_ptr + b * num_nodes + node, mask=row_ok, other=0)
    pre = tl.load(prefix_len_ptr + b * num_nodes + node, mask=row_ok, other=0)
    lo = split * SPLIT_TOKENS
    row_hi = tl.minimum(nk, lo + SPLIT_TOKENS)  # this split's keys of each row: [lo, row_hi)
    hi = tl.max(row_hi, axis=0)
    # Blocks below `shared_hi` hold, for every row, only keys at their own slot: one shared tile.
    tree_from = tl.where(row_ok & (pre < nk), pre, _NO_TREE)
    first_tree = tl.min(tree_from, axis=0)
    shared_hi = tl.where(first_tree >= hi, hi, lo + (first_tree - lo) // BLOCK_N * BLOCK_N)
    shared_hi = tl.maximum(shared_hi, lo)

    k_base = k_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_ptr + b * stride_vb + kvh * stride_vh
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([ROWS_], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS_], dtype=tl.float32)
    acc = tl.zeros([ROWS_, BLOCK_D], dtype=tl.float32)

    for start in range(lo, shared_hi, BLOCK_N):
        pos = start + offs_n
        visible = pos[None, :] < row_hi[:, None]
        kv_mask = (pos < hi)[:, None] & d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + pos[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0)
        # Scores and weighted values: the same expressions, tile shapes and accumulators as in
        # the per-query loop below (written out twice: the interpreter pays per helper call).
        if TENSOR_CORES:
            raw = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            raw = tl.dot(qf, tl.trans(k.to(tl.float32)), input_precision="ieee")
        s = tl.where(visible, raw * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # NOTE: the select keeps the dot's accumulator at zero, as in the per-query path below:
        # Triton would fold `acc * alpha + dot(p, v)` into dot(p, v, acc * alpha), a different
        # rounding sequence from the per-query path's, so the same row would get other bits.
        if TENSOR_CORES:
            w = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            w = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        pv = tl.where(row_ok[:, None], w, 0.0)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    # A runtime loop over the program's queries (not unrolled: 16-query programs would compile
    # for minutes); only the queries that exist (1 for a decode step).
    num_here = tl.minimum(num_nodes - first_node, NODES)
    for start in range(shared_hi, hi, BLOCK_N):
        pos = start + offs_n
        visible = pos[None, :] < row_hi[:, None]
        raw = tl.zeros([ROWS_, BLOCK_N], dtype=tl.float32)
        for n in range(0, num_here):
            # Slots of query first_node + n's logical positions `pos` (module docstring).
            pre_n = tl.load(prefix_len_ptr + b * num_nodes + first_node + n)
            ok = pos < tl.load(num_keys_ptr + b * num_nodes + first_node + n)
            in_tree = pos >= pre_n
            anc_n = anc_ptr + b * stride_ab + (first_node + n) * stride_an
            anc = tl.load(anc_n + (pos - pre_n), mask=ok & in_tree, other=0)
            slot = tl.where(in_tree, pre_n + anc, pos)
            kv_mask = ok[:, None] & d_ok[None, :]
            k = tl.load(
                k_base + slot[:, None] * stride_kl + offs_d[None, :], mask=kv_mask, other=0.0
            )
            if TENSOR_CORES:
                raw_n = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                raw_n = tl.dot(qf, tl.trans(k.to(tl.float32)), input_precision="ieee")
            raw = tl.where(local[:, None] == n, raw_n, raw)
        s = tl.where(visible, raw * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        pv = tl.zeros([ROWS_, BLOCK_D], dtype=tl.float32)
        for n in range(0, num_here):
            # Slots of query first_node + n's logical positions `pos` (module docstring).
            pre_n = tl.load(prefix_len_ptr + b * num_nodes + first_node + n)
            ok = pos < tl.load(num_keys_ptr + b * num_nodes + first_node + n)
            in_tree = pos >= pre_n
            anc_n = anc_ptr + b * stride_ab + (first_node + n) * stride_an
            anc = tl.load(anc_n + (pos - pre_n), mask=ok & in_tree, other=0)
            slot = tl.where(in_tree, pre_n + anc, pos)
            kv_mask = ok[:, None] & d_ok[None, :]
            v = tl.load(
                v_base + slot[:, None] * stride_vl + offs_d[None, :], mask=kv_mask, other=0.0
            )
            if TENSOR_CORES:
                w = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                w = tl.dot(p, v.to(tl.float32), input_precision="ieee")
            pv = tl.where(local[:, None] == n, w, pv)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    part = ((b * num_nodes + node) * num_heads + head) * num_splits + split
    has_keys = row_ok & (lo < nk)  # the combine reads exactly these partials
    tl.store(ws_m_ptr + part, m_i, mask=has_keys)
    tl.store(ws_l_ptr + part, l_i, mask=has_keys)
    a_ptrs = ws_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(a_ptrs, acc, mask=has_keys[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=_COMBINE_ARGS)
def _exact_attention_combine_kernel(
    num_keys_ptr,  # [B, N] int32 (contiguous)
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
    BLOCK_H: tl.constexpr,  # next power of two >= Hq
    SPLIT_TOKENS: tl.constexpr,
):
    """Grid (B * N,): merge one query's used splits, for all its heads, in increasing order (a
    fixed sequence of elementwise steps per head)."""
    bn = tl.program_id(0).to(tl.int64)
    b = bn // num_nodes
    node = bn % num_nodes
    heads = tl.arange(0, BLOCK_H)
    h_ok = heads < num_heads
    offs_d = tl.arange(0, BLOCK_D)
    hd_ok = h_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    nk = tl.load(num_keys_ptr + bn)
    base = (bn * num_heads + heads) * num_splits  # [BLOCK_H]
    m_run = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_run = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for s in range(0, tl.cdiv(nk, SPLIT_TOKENS)):
        m_s = tl.load(ws_m_ptr + base + s, mask=h_ok, other=0.0)
        l_s = tl.load(ws_l_ptr + base + s, mask=h_ok, other=0.0)
        a_ptrs = ws_acc_ptr + (base + s)[:, None] * HEAD_DIM + offs_d[None, :]
        acc_s = tl.load(a_ptrs, mask=hd_ok, other=0.0)
        m_new = tl.maximum(m_run, m_s)
        alpha = tl.exp2(m_run - m_new)
        w = tl.exp2(m_s - m_new)
        l_run = l_run * alpha + l_s * w
        acc = acc * alpha[:, None] + acc_s * w[:, None]
        m_run = m_new
    res = acc / tl.where(l_run == 0.0, 1.0, l_run)[:, None]
    o_ptrs = out_ptr + b * stride_ob + node * stride_on + heads[:, None] * stride_oh
    tl.store(o_ptrs + offs_d[None, :], res.to(out_ptr.dtype.element_ty), mask=hd_ok)


def _aot_specs() -> list[AotSpec]:
    # Every configuration the runtime uses: SmolLM2 (9 / 3 heads, D 64) and Llama-7B (32 / 32,
    # D 128) in bf16 and fp32, elementwise; the opt-in dot variant in bf16.
    specs = []
    for dtype in ("fp32", "bf16"):
        ptr = f"*{dtype}"
        sig = {
            "q_ptr": ptr,
            "k_ptr": ptr,
            "v_ptr": ptr,
            "num_keys_ptr": "*i32",
            "prefix_len_ptr": "*i32",
            "anc_ptr": "*i32",
            "ws_acc_ptr": "*fp32",
            "ws_m_ptr": "*fp32",
            "ws_l_ptr": "*fp32",
            **{a: "i32" for a in _ARGS if not a.endswith("_ptr") and a != "qk_scale"},
            "qk_scale": "fp32",
        }
        combine_sig = {
            "num_keys_ptr": "*i32",
            "ws_acc_ptr": "*fp32",
            "ws_m_ptr": "*fp32",
            "ws_l_ptr": "*fp32",
            "out_ptr": ptr,
            **{a: "i32" for a in _COMBINE_ARGS if not a.endswith("_ptr")},
        }
        for heads, group, head_dim in ((9, 3, 64), (32, 1, 128)):
            for tensor_cores in (False,) if dtype == "fp32" else (False, True):
                cfg = exact_config(group, head_dim, tensor_cores=tensor_cores)
                consts = {
                    "HEAD_DIM": head_dim,
                    "BLOCK_D": head_dim,
                    "BLOCK_G": cfg.block_g,
                    "NODES": cfg.nodes,
                    "BLOCK_N": cfg.block_n,
                    "SPLIT_TOKENS": cfg.split_tokens,
                    "TENSOR_CORES": tensor_cores,
                }
                full_sig = {**sig, **dict.fromkeys(consts, "constexpr")}
                specs.append(AotSpec(_exact_attention_kernel, full_sig, consts, cfg.num_warps))
            consts = {
                "HEAD_DIM": head_dim,
                "BLOCK_D": head_dim,
                "BLOCK_H": triton.next_power_of_2(heads),
                "SPLIT_TOKENS": SPLIT_TOKENS,
            }
            full_sig = {**combine_sig, **dict.fromkeys(consts, "constexpr")}
            specs.append(AotSpec(_exact_attention_combine_kernel, full_sig, consts))
    return specs


AOT_SPECS = _aot_specs()


def _launch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: ExactPlan,
    scale: float | None,
    out: torch.Tensor | None,
    tensor_cores: bool,
    split_tokens: int | None,
    block_n: int | None,
    name: str,
) -> torch.Tensor:
    b, n, hq, d = q.shape
    hkv, max_len = k_cache.shape[1], k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(
            f"{name}: out must be {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}"
        )
    for label, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name}: {label} needs a contiguous last dim, strides {x.stride()}")
    for label, x in (("num_keys", plan.num_keys), ("prefix_len", plan.prefix_len)):
        if x.shape != (b, n) or x.dtype != torch.int32 or not x.is_contiguous():
            raise ValueError(
                f"{name}: plan.{label} must be contiguous [B={b}, N={n}] int32, got "
                f"{tuple(x.shape)} {x.dtype}"
            )
    anc = plan.ancestors
    if anc.dim() != 3 or anc.shape[:2] != (b, n) or anc.dtype != torch.int32 or anc.stride(2) > 1:
        raise ValueError(
            f"{name}: plan.ancestors must be [B={b}, N={n}, A] int32 with a contiguous last dim, "
            f"got {tuple(anc.shape)} {anc.dtype}"
        )
    if b == 0 or n == 0:
        return out
    group = hq // hkv
    cfg = exact_config(group, d, tensor_cores=tensor_cores)
    split_tokens = cfg.split_tokens if split_tokens is None else split_tokens
    block_n = cfg.block_n if block_n is None else block_n
    if block_n & (block_n - 1) or block_n < 16 or split_tokens % block_n:
        raise ValueError(
            f"{name}: block_n={block_n} must be a power of two >= 16 dividing "
            f"split_tokens={split_tokens}"
        )
    num_splits = triton.cdiv(max_len, split_tokens)
    ws_acc = torch.empty(b, n, hq, num_splits, d, dtype=torch.float32, device=q.device)
    ws_m = torch.empty(b, n, hq, num_splits, dtype=torch.float32, device=q.device)
    ws_l = torch.empty_like(ws_m)
    block_d = triton.next_power_of_2(max(d, 16))
    scale = 1.0 / d**0.5 if scale is None else scale
    grid = (b * triton.cdiv(n, cfg.nodes), hkv, num_splits)
    _exact_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        plan.num_keys,
        plan.prefix_len,
        anc,
        ws_acc,
        ws_m,
        ws_l,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        anc.stride(0),
        anc.stride(1),
        n,
        group,
        hq,
        num_splits,
        scale * LOG2E,
        HEAD_DIM=d,
        BLOCK_D=block_d,
        BLOCK_G=cfg.block_g,
        NODES=cfg.nodes,
        BLOCK_N=block_n,
        SPLIT_TOKENS=split_tokens,
        TENSOR_CORES=tensor_cores,
        num_warps=cfg.num_warps,
        num_stages=1,
    )
    _exact_attention_combine_kernel[(b * n,)](
        plan.num_keys,
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
        BLOCK_H=triton.next_power_of_2(hq),
        SPLIT_TOKENS=split_tokens,
    )
    return out


def exact_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    plan: ExactPlan | None = None,
    tensor_cores: bool = False,
    split_tokens: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Tree form (inputs as `tree_attention`). `plan` = `exact_tree_plan(cache_len, tree_mask)`,
    computed here when not given (pass it to share one plan between the layers). `tensor_cores`,
    `split_tokens` and `block_n` must stay the same for a whole run (changing them changes the
    bits: that is what the negative-control tests do)."""
    check_tree_inputs(q, k_cache, v_cache, cache_len, tree_mask)
    if plan is None:
        plan = exact_tree_plan(cache_len, tree_mask)
    return _launch(
        q,
        k_cache,
        v_cache,
        plan,
        scale,
        out,
        tensor_cores,
        split_tokens,
        block_n,
        "exact_attention",
    )


def exact_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    plan: ExactPlan | None = None,
) -> torch.Tensor:
    """The same attention in fp32 math (tree_attention's reference, upcast): the spec the kernel is
    compared with under tolerances. Not itself batch-invariant (the CPU fallback)."""
    result = tree_attention_ref(q, k_cache, v_cache, cache_len, tree_mask, scale=scale, upcast=True)
    return result if out is None else out.copy_(result)


def exact_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    plan: ExactPlan | None = None,
) -> torch.Tensor:
    """Dispatch: the Triton kernel for CUDA tensors, the reference otherwise."""
    impl = exact_attention_triton if use_triton(q) else exact_attention_ref
    return impl(q, k_cache, v_cache, cache_len, tree_mask, scale=scale, out=out, plan=plan)


def exact_prefill_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    plan: ExactPlan | None = None,
    tensor_cores: bool = False,
    split_tokens: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Chain / prefill form (inputs as `prefill_attention`), the same kernel as the tree form.
    `plan` = `exact_chain_plan(start, lengths, T)` when not given."""
    check_prefill_inputs(q, k_cache, v_cache, start, lengths)
    if plan is None:
        plan = exact_chain_plan(start, lengths[: q.shape[0]], q.shape[1])
    return _launch(
        q,
        k_cache,
        v_cache,
        plan,
        scale,
        out,
        tensor_cores,
        split_tokens,
        block_n,
        "exact_prefill_attention",
    )


def exact_prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    plan: ExactPlan | None = None,
) -> torch.Tensor:
    """prefill_attention's reference in fp32 math."""
    result = prefill_attention_ref(q, k_cache, v_cache, start, lengths, scale=scale, upcast=True)
    return result if out is None else out.copy_(result)


def exact_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    plan: ExactPlan | None = None,
) -> torch.Tensor:
    """Dispatch: the Triton kernel for CUDA tensors, the reference otherwise."""
    impl = exact_prefill_attention_triton if use_triton(q) else exact_prefill_attention_ref
    return impl(q, k_cache, v_cache, start, lengths, scale=scale, out=out, plan=plan)
