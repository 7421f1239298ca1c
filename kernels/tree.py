"""Tree mask: parent pointers -> ancestor mask, depth and position ids of a draft tree.

A draft tree per sequence is given by `parents [B, N]` in topological order (parents[b, i] < i,
node 0 is the root with NO_PARENT) and `num_nodes [B]`; nodes i >= num_nodes[b] are padding.
Outputs (`TreeMask`):
- `mask [B, N, N] bool`: mask[b, i, j] is True iff j is an ancestor of i or i itself. Pad rows hold
  only themselves, so a pad query still attends to something and its softmax stays finite.
- `depth [B, N] int32`: root 0, child of a depth-d node d + 1; pad nodes 0.
- `positions [B, N] int32` (when `cache_len [B]` is given): cache_len[:, None] + depth, the
  position ids of the nodes (the root sits at cache_len: it is the next token to enter the cache).

Algorithm (one program per sequence, all in registers): M = I + P with P[i, parent(i)] = 1; after
k boolean squarings M[i, j] says "j is an ancestor of i within 2^k edges", so ceil(log2 N)
squarings (tl.dot on 0/1 fp16 tiles, exact) give the ancestor mask; depth(i) = popcount(row i) - 1
(EAGLE's rule). O(N^3 log N) tensor-core work but no sequential dependency over the nodes: a
row-by-row walk needs N dependent global round trips (~1 µs each), the squarings a handful of dots.
The reference walks rows in topological order: row i = row parent(i) OR {i}.

Example: parents = [-1, 0, 0, 1], num_nodes = 4, cache_len = 7
  -> depth = [0, 1, 1, 2], positions = [7, 8, 8, 9], mask rows 0:{0} 1:{0,1} 2:{0,2} 3:{0,1,3}.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import debug_checks, use_triton
from samgpu.kernels.types import NO_PARENT, TreeMask


@triton.jit
def _tree_mask_kernel(
    parents_ptr,  # [B, N] int32, NO_PARENT for root/pad
    num_nodes_ptr,  # [B] int32
    cache_len_ptr,  # [B] int32 (read only when HAS_POSITIONS)
    mask_ptr,  # [B, N, N] uint8 view of the bool mask (out)
    depth_ptr,  # [B, N] int32 (out)
    positions_ptr,  # [B, N] int32 (out, written only when HAS_POSITIONS)
    MAX_NODES: tl.constexpr,  # N
    BLOCK_N: tl.constexpr,  # next power of two >= max(N, 16) (tl.dot's minimum)
    NUM_SQUARINGS: tl.constexpr,  # ceil(log2(N)): paths have at most N - 1 edges
    HAS_POSITIONS: tl.constexpr,
):
    """One program per sequence; the whole [N, N] mask lives in registers."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    num_nodes = tl.load(num_nodes_ptr + b)
    # Pad nodes (and the root) get no parent: their rows stay {self}.
    parents = tl.load(parents_ptr + b * MAX_NODES + rows, mask=rows < num_nodes, other=-1)
    m = (rows[None, :] == rows[:, None]) | (rows[None, :] == parents[:, None])
    m = m.to(tl.float16)
    for _ in tl.static_range(NUM_SQUARINGS):
        # (I + P)^(2^k) > 0: ancestors within 2^k edges. fp16 0/1 inputs, fp32 sums: exact.
        m = (tl.dot(m, m) > 0.5).to(tl.float16)
    is_anc = m > 0.5
    depth = tl.sum(is_anc.to(tl.int32), axis=1) - 1
    in_range = rows < MAX_NODES
    out = mask_ptr + b * MAX_NODES * MAX_NODES + rows[:, None] * MAX_NODES + rows[None, :]
    tl.store(out, is_anc.to(tl.uint8), mask=in_range[:, None] & in_range[None, :])
    tl.store(depth_ptr + b * MAX_NODES + rows, depth, mask=in_range)
    if HAS_POSITIONS:
        cache_len = tl.load(cache_len_ptr + b)
        tl.store(positions_ptr + b * MAX_NODES + rows, cache_len + depth, mask=in_range)


def _launch_params(max_nodes: int) -> dict:
    block = max(16, triton.next_power_of_2(max_nodes))
    return dict(
        MAX_NODES=max_nodes,
        BLOCK_N=block,
        NUM_SQUARINGS=max(0, math.ceil(math.log2(max_nodes))) if max_nodes > 1 else 0,
    )


def _num_warps(max_nodes: int) -> int:
    return 8 if max_nodes > 64 else 4


def _check(parents: torch.Tensor, num_nodes: torch.Tensor, cache_len: torch.Tensor | None) -> None:
    if parents.ndim != 2 or parents.dtype != torch.int32:
        raise ValueError(
            f"parents must be [B, N] int32, got {tuple(parents.shape)} {parents.dtype}"
        )
    if num_nodes.shape != parents.shape[:1] or num_nodes.dtype != torch.int32:
        raise ValueError(
            f"num_nodes {tuple(num_nodes.shape)} {num_nodes.dtype} must be [B] int32 "
            f"matching parents {tuple(parents.shape)}"
        )
    if cache_len is not None and (
        cache_len.shape != parents.shape[:1] or cache_len.dtype != torch.int32
    ):
        raise ValueError(
            f"cache_len {tuple(cache_len.shape)} {cache_len.dtype} must be [B] int32 "
            f"matching parents {tuple(parents.shape)}"
        )
    if debug_checks():
        n = parents.shape[1]
        idx = torch.arange(n, device=parents.device)
        live = idx[None, :] < num_nodes[:, None].long()
        bad_order = live & (idx[None, :] > 0) & ((parents < 0) | (parents.long() >= idx[None, :]))
        if bool(bad_order.any()) or bool((parents[:, 0] != NO_PARENT).any()):
            raise ValueError("parents are not in topological order (need parents[b, i] < i)")
        if bool(((num_nodes < 1) | (num_nodes > n)).any()):
            raise ValueError(f"num_nodes out of [1, {n}]")


def _check_out(out: TreeMask, parents: torch.Tensor, with_positions: bool) -> None:
    """A given `out` must be the parents' shape, contiguous: the kernel writes it at N per row (a
    buffer of another width, e.g. the plain steps' N = 1, would be written past its end)."""
    b, n = parents.shape
    bufs = [("mask", out.mask, (b, n, n), torch.bool), ("depth", out.depth, (b, n), torch.int32)]
    if with_positions:
        bufs.append(("positions", out.positions, (b, n), torch.int32))
    for name, t, shape, dtype in bufs:
        if t is None or t.shape != shape or t.dtype != dtype or not t.is_contiguous():
            got = None if t is None else (tuple(t.shape), t.dtype)
            raise ValueError(f"out.{name} {got} must be {shape} {dtype}, contiguous")


def _alloc(parents: torch.Tensor, with_positions: bool) -> TreeMask:
    tm = TreeMask.empty(parents.shape[0], parents.shape[1], parents.device)
    if not with_positions:
        tm.positions = None
    return tm


def tree_mask_triton(
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    cache_len: torch.Tensor | None = None,
    *,
    out: TreeMask | None = None,
) -> TreeMask:
    _check(parents, num_nodes, cache_len)
    has_positions = cache_len is not None
    if out is not None:
        _check_out(out, parents, has_positions)
    out = out if out is not None else _alloc(parents, has_positions)
    num_reqs, max_nodes = parents.shape
    _tree_mask_kernel[(num_reqs,)](
        parents.contiguous(),
        num_nodes,
        cache_len if has_positions else num_nodes,
        out.mask.view(torch.uint8),  # bool -> uint8: same bytes, plain integer loads/stores
        out.depth,
        out.positions if has_positions else out.depth,
        HAS_POSITIONS=has_positions,
        num_warps=_num_warps(max_nodes),
        **_launch_params(max_nodes),
    )
    return out


def tree_mask_ref(
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    cache_len: torch.Tensor | None = None,
    *,
    out: TreeMask | None = None,
) -> TreeMask:
    """Reference, a loop over nodes (vectorised over the batch): row i = row parent(i) + {i}."""
    _check(parents, num_nodes, cache_len)
    if out is not None:
        _check_out(out, parents, cache_len is not None)
    num_reqs, max_nodes = parents.shape
    par = parents.long().cpu()
    nn = num_nodes.long().cpu()
    rows = torch.arange(num_reqs)
    mask = torch.zeros(num_reqs, max_nodes, max_nodes, dtype=torch.bool)
    depth = torch.zeros(num_reqs, max_nodes, dtype=torch.int64)
    for i in range(max_nodes):
        p = par[:, i]
        has_parent = (i < nn) & (p != NO_PARENT)
        p = p.clamp(min=0)
        mask[:, i] = mask[rows, p] & has_parent[:, None]
        mask[:, i, i] = True
        depth[:, i] = torch.where(has_parent, depth[rows, p] + 1, 0)
    out = out if out is not None else _alloc(parents, cache_len is not None)
    out.mask.copy_(mask)
    out.depth.copy_(depth)
    if cache_len is not None:
        out.positions.copy_(cache_len.long().cpu()[:, None] + depth)
    return out


def tree_mask(
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    cache_len: torch.Tensor | None = None,
    *,
    out: TreeMask | None = None,
) -> TreeMask:
    if use_triton(parents):
        return tree_mask_triton(parents, num_nodes, cache_len, out=out)
    return tree_mask_ref(parents, num_nodes, cache_len, out=out)


_SIG = {
    "parents_ptr": "*i32",
    "num_nodes_ptr": "*i32",
    "cache_len_ptr": "*i32",
    "mask_ptr": "*u8",
    "depth_ptr": "*i32",
    "positions_ptr": "*i32",
    "MAX_NODES": "constexpr",
    "BLOCK_N": "constexpr",
    "NUM_SQUARINGS": "constexpr",
    "HAS_POSITIONS": "constexpr",
}
AOT_SPECS = [
    AotSpec(
        _tree_mask_kernel,
        _SIG,
        {**_launch_params(n), "HAS_POSITIONS": hp},
        num_warps=_num_warps(n),
    )
    for n, hp in [(1, True), (7, True), (64, True), (81, False), (128, True)]
]
