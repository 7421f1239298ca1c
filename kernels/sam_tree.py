"""Count-ranked draft tree from the static suffix automaton (SAM-tree).

For a sequence whose committed text's longest corpus match is the string x (state s, length L), a
transition s -a-> t leads to the state of x·a, and `count[t]` (size of t's end-position set) is the
number of corpus occurrences of x·a; deeper, every path x·a·b·... has its own state and count. So
count[node] / count[s] estimates P(path | x), and counts never grow along a path.

The tree is the best-first expansion of that trie: node 0 is the root (state s); repeatedly take the
unexpanded candidate with the largest count (ties: the candidate created earlier, then the smaller
edge index) until N nodes are used. Candidates are generated lazily: when a node is taken, two
candidates enter the frontier: its own best child, and the next-best sibling after it (the best
child of its parent ranked below it). This enumerates children in rank order without ever holding
all of them, and makes the tree the exact top-N nodes by count (ties as said), in topological order
(a child enters the frontier only after its parent is taken). Each pick scans the CSR edge slice of
one or two states; slices longer than `max_scan` edges are ranked over their first max_scan edges
only (bounds the cost on very short matches; states are CSR-sorted by token, so this is a cap,
not a ranking).

Sequences with match_len < min_match get a root-only tree (and so do matches at the root).

Example: corpus "a b c EOS a b d EOS a b c EOS", text "... a b": s = state("a b") (count 3);
children c (count 2), d (count 1); c's child EOS (2): N = 4 -> tokens [b, c, EOS, d],
parents [-1, 0, 1, 0].

One program per sequence, frontier and tree in registers (num_warps = 1: the reductions stay within
a warp). Layout: CSR `edge_offsets [S+1]`, `edge_token [E]`, `edge_dst [E]`, `count [S]` int32;
`state`, `match_len`, `root` [B] int32; out tokens/parents [B, N] int32, num_nodes [B] int32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels import _sam_jit as J
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels._sam_tree_jit import best_edge
from samgpu.kernels.types import NO_EDGE, NO_PARENT, ROOT_STATE

FILL_TOKEN: int = 0  # token of pad nodes: a valid id, because the runner embeds every node
SCAN_BLOCK: int = 32
_NO_PARENT = tl.constexpr(NO_PARENT)
_NO_EDGE = tl.constexpr(NO_EDGE)
_FILL_TOKEN = tl.constexpr(FILL_TOKEN)
_BIG = tl.constexpr(2147483647)


@triton.jit(do_not_specialize=["min_match", "max_scan", "num_nodes_cap"])
def _sam_tree_kernel(
    edge_offsets_ptr,  # [S+1] int32
    edge_token_ptr,  # [E] int32 or uint16
    edge_dst_ptr,  # [E] int32
    count_ptr,  # [S] int32
    state_ptr,  # [B] int32: static match state
    match_len_ptr,  # [B] int32
    root_ptr,  # [B] int32: root token
    tokens_ptr,  # [B, N] int32 (out)
    parents_ptr,  # [B, N] int32 (out)
    num_nodes_ptr,  # [B] int32 (out)
    stride_out_b,
    num_nodes_cap,  # N
    min_match,
    max_scan,
    OUT_BLOCK: tl.constexpr,
    F_BLOCK: tl.constexpr,
    SCAN: tl.constexpr,
):
    """One program per sequence: best-first expansion with a register-resident frontier."""
    b = tl.program_id(0)
    s0 = tl.load(state_ptr + b)
    is_live = (tl.load(match_len_ptr + b) >= min_match) & (s0 > 0) & (num_nodes_cap > 1)
    ii = tl.arange(0, OUT_BLOCK)
    ff = tl.arange(0, F_BLOCK)
    out_tok = tl.where(ii == 0, tl.load(root_ptr + b), _FILL_TOKEN)
    out_par = tl.zeros([OUT_BLOCK], dtype=tl.int32) + _NO_PARENT
    node_state = tl.where(ii == 0, s0, 0)
    # frontier: candidate edge, its count, the tree node it hangs from (count -1 = empty slot)
    f_edge = tl.zeros([F_BLOCK], dtype=tl.int32) + _NO_EDGE
    f_count = tl.zeros([F_BLOCK], dtype=tl.int32) - 1
    f_parent = tl.zeros([F_BLOCK], dtype=tl.int32)
    e0, c0 = best_edge(edge_offsets_ptr, edge_dst_ptr, count_ptr, s0, _BIG, -1, max_scan, SCAN)
    push = is_live & (e0 >= 0)
    f_edge = tl.where(push & (ff == 0), e0, f_edge)
    f_count = tl.where(push & (ff == 0), c0, f_count)
    num_f = push.to(tl.int32)
    count = s0 * 0 + 1
    c_top = tl.max(f_count, axis=0)
    while (count < num_nodes_cap) & (c_top >= 0):
        slot = tl.min(tl.where(f_count == c_top, ff, _BIG), axis=0)
        at = ff == slot
        edge = tl.sum(tl.where(at, f_edge, 0), axis=0)
        parent = tl.sum(tl.where(at, f_parent, 0), axis=0)
        f_count = tl.where(at, -1, f_count)
        dst = tl.load(edge_dst_ptr + edge)
        tok = tl.load(edge_token_ptr + edge).to(tl.int32)
        here = ii == count
        out_tok = tl.where(here, tok, out_tok)
        out_par = tl.where(here, parent, out_par)
        node_state = tl.where(here, dst, node_state)
        # its best child, then the next-best sibling after it
        ce, cc = best_edge(edge_offsets_ptr, edge_dst_ptr, count_ptr, dst, _BIG, -1, max_scan, SCAN)
        p_state = tl.sum(tl.where(ii == parent, node_state, 0), axis=0)
        se, sc = best_edge(
            edge_offsets_ptr, edge_dst_ptr, count_ptr, p_state, c_top, edge, max_scan, SCAN
        )
        put = (ce >= 0) & (ff == num_f)
        f_edge = tl.where(put, ce, f_edge)
        f_count = tl.where(put, cc, f_count)
        f_parent = tl.where(put, count, f_parent)
        num_f += (ce >= 0).to(tl.int32)
        put = (se >= 0) & (ff == num_f)
        f_edge = tl.where(put, se, f_edge)
        f_count = tl.where(put, sc, f_count)
        f_parent = tl.where(put, parent, f_parent)
        num_f += (se >= 0).to(tl.int32)
        count += 1
        c_top = tl.max(f_count, axis=0)
    in_row = ii < num_nodes_cap
    tl.store(tokens_ptr + b * stride_out_b + ii, out_tok, mask=in_row)
    tl.store(parents_ptr + b * stride_out_b + ii, out_par, mask=in_row)
    tl.store(num_nodes_ptr + b, count)


def _check(automaton, state, match_len, root, tokens, parents, num_nodes):
    J.check_static_arrays(
        automaton, ("edge_offsets", "edge_token", "edge_dst", "count"), tokens.device
    )
    if tokens.dim() != 2 or tokens.shape[1] < 1 or parents.shape != tokens.shape:
        raise ValueError(
            f"tree tokens {tuple(tokens.shape)} / parents {tuple(parents.shape)}: expected "
            "[B, N >= 1] both"
        )
    for name, t in (("tokens", tokens), ("parents", parents)):
        if t.dtype != torch.int32:
            raise ValueError(f"tree {name} {tuple(t.shape)} {t.dtype}: expected int32")
    # The kernel reads and writes the [B] vectors at element b (no stride): for a strided view (a
    # column of a wider buffer) it would write num_nodes[b] into the neighbouring columns.
    B = tokens.shape[0]
    for name, t in dict(state=state, match_len=match_len, root=root, num_nodes=num_nodes).items():
        if t.shape != (B,) or t.dtype != torch.int32 or not t.is_contiguous():
            raise ValueError(
                f"{name} {tuple(t.shape)} {t.dtype}: expected contiguous ({B},) int32 "
                f"(tree tokens {tuple(tokens.shape)})"
            )


def sam_tree_triton(
    automaton,
    state: torch.Tensor,
    match_len: torch.Tensor,
    root: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    *,
    min_match: int = 1,
    max_scan: int = 4096,
) -> None:
    """Write each sequence's count-ranked tree (budget N = tokens.shape[1]) into the out buffers.

    `automaton` has int32 tensors edge_offsets, edge_token, edge_dst, count (StaticAutomaton)."""
    _check(automaton, state, match_len, root, tokens, parents, num_nodes)
    if tokens.stride(1) != 1 or tokens.stride() != parents.stride():
        raise ValueError("tree tokens and parents must be row-contiguous with equal strides")
    B, N = tokens.shape
    _sam_tree_kernel[(B,)](
        automaton.edge_offsets,
        automaton.edge_token,
        automaton.edge_dst,
        automaton.count,
        state,
        match_len,
        root,
        tokens,
        parents,
        num_nodes,
        tokens.stride(0),
        N,
        min_match,
        max_scan,
        OUT_BLOCK=triton.next_power_of_2(N),
        F_BLOCK=triton.next_power_of_2(2 * N),
        SCAN=SCAN_BLOCK,
        num_warps=1,
    )


def sam_tree_ref(
    automaton,
    state: torch.Tensor,
    match_len: torch.Tensor,
    root: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    *,
    min_match: int = 1,
    max_scan: int = 4096,
) -> None:
    """Reference: explicit best-first search over all children, sorted by (count desc, edge asc);
    ties between candidates go to the one pushed first."""
    _check(automaton, state, match_len, root, tokens, parents, num_nodes)
    # element access on CPU copies of the arrays, never whole-array lists (indices are millions)
    off, etok, edst, cnt = (
        getattr(automaton, n).cpu() for n in ("edge_offsets", "edge_token", "edge_dst", "count")
    )
    B, N = tokens.shape

    def ranked(s):
        lo = int(off[s])
        hi = min(int(off[s + 1]), lo + max_scan)
        keys = (-cnt[edst[lo:hi].long()].long()) * (hi - lo + 1) + torch.arange(hi - lo)
        return (lo + torch.argsort(keys)).tolist()

    out_tok = [[FILL_TOKEN] * N for _ in range(B)]
    out_par = [[NO_PARENT] * N for _ in range(B)]
    out_num = [1] * B
    for b in range(B):
        s0, ml = int(state[b]), int(match_len[b])
        out_tok[b][0] = int(root[b])
        if ml < min_match or s0 <= ROOT_STATE or N < 2:
            continue
        node_state = [s0]
        # frontier entries: [count, push order, edge, parent node, rank within the parent]
        frontier = []
        pushes = 0
        first = ranked(s0)
        if first:
            frontier.append((int(cnt[edst[first[0]]]), pushes, first[0], 0, 0))
            pushes += 1
        while len(node_state) < N and frontier:
            best = min(frontier, key=lambda f: (-f[0], f[1]))
            frontier.remove(best)
            _, _, edge, parent, rank = best
            node = len(node_state)
            out_tok[b][node] = int(etok[edge])
            out_par[b][node] = parent
            node_state.append(int(edst[edge]))
            kids = ranked(node_state[-1])
            if kids:
                frontier.append((int(cnt[edst[kids[0]]]), pushes, kids[0], node, 0))
                pushes += 1
            sibs = ranked(node_state[parent])
            if rank + 1 < len(sibs):
                nxt = sibs[rank + 1]
                frontier.append((int(cnt[edst[nxt]]), pushes, nxt, parent, rank + 1))
                pushes += 1
        out_num[b] = len(node_state)
    tokens.copy_(torch.tensor(out_tok, dtype=torch.int32))
    parents.copy_(torch.tensor(out_par, dtype=torch.int32))
    num_nodes.copy_(torch.tensor(out_num, dtype=torch.int32))


def sam_tree(
    automaton,
    state: torch.Tensor,
    match_len: torch.Tensor,
    root: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    *,
    min_match: int = 1,
    max_scan: int = 4096,
) -> None:
    fn = sam_tree_triton if use_triton(tokens) else sam_tree_ref
    fn(
        automaton,
        state,
        match_len,
        root,
        tokens,
        parents,
        num_nodes,
        min_match=min_match,
        max_scan=max_scan,
    )


AOT_SPECS = [
    AotSpec(
        _sam_tree_kernel,
        {
            "edge_offsets_ptr": "*i32",
            "edge_token_ptr": edge_sig,
            "edge_dst_ptr": "*i32",
            "count_ptr": "*i32",
            "state_ptr": "*i32",
            "match_len_ptr": "*i32",
            "root_ptr": "*i32",
            "tokens_ptr": "*i32",
            "parents_ptr": "*i32",
            "num_nodes_ptr": "*i32",
            "stride_out_b": "i32",
            "num_nodes_cap": "i32",
            "min_match": "i32",
            "max_scan": "i32",
            "OUT_BLOCK": "constexpr",
            "F_BLOCK": "constexpr",
            "SCAN": "constexpr",
        },
        {"OUT_BLOCK": 64, "F_BLOCK": 128, "SCAN": SCAN_BLOCK},
        num_warps=1,
    )
    for edge_sig in ("*i32", "*u16")
]
