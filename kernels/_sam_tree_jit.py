"""@triton.jit helper of kernels/sam_tree.py, kept in a private module so the AOT check (which wants
an AotSpec for every @triton.jit object of a kernel module) compiles it through its caller only."""

from __future__ import annotations

import triton
import triton.language as tl

from samgpu.kernels.types import NO_EDGE

_NO_EDGE = tl.constexpr(NO_EDGE)
_BIG = tl.constexpr(2147483647)


@triton.jit
def best_edge(
    edge_offsets_ptr,  # [S+1] int32
    edge_dst_ptr,  # [E] int32
    count_ptr,  # [S] int32
    src,  # scalar int32: the state whose edges are ranked
    below_count,  # scalar int32: only edges ranked after (below_count, below_edge)
    below_edge,  # scalar int32
    max_scan,
    SCAN: tl.constexpr,
):
    """Best edge of `src` ranked strictly after (below_count, below_edge) by (count desc, edge
    asc): returns (edge, count), (NO_EDGE, -1) if none."""
    lo = tl.load(edge_offsets_ptr + src)
    hi = tl.minimum(tl.load(edge_offsets_ptr + src + 1), lo + max_scan)
    best_c = lo * 0 - 1
    best_e = lo * 0 + _BIG
    off = lo
    while off < hi:
        e = off + tl.arange(0, SCAN)
        ok = e < hi
        dst = tl.load(edge_dst_ptr + e, mask=ok, other=0)
        c = tl.load(count_ptr + dst, mask=ok, other=-1)
        ok = ok & ((c < below_count) | ((c == below_count) & (e > below_edge)))
        c = tl.where(ok, c, -1)
        cmax = tl.max(c, axis=0)
        emin = tl.min(tl.where(ok & (c == cmax), e, _BIG), axis=0)
        better = (cmax > best_c) | ((cmax == best_c) & (emin < best_e))
        better = better & (cmax >= 0)
        best_c = tl.where(better, cmax, best_c)
        best_e = tl.where(better, emin, best_e)
        off += SCAN
    return tl.where(best_c >= 0, best_e, _NO_EDGE), best_c
