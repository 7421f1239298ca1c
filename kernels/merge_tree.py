"""Merge two draft trees with the same root into one, trie-style, within a node budget.

Tree A (e.g. a suffix-automaton chain) is copied first, its first min(num_a, N) nodes unchanged
(A must have no two sibling nodes with the same token; a chain never has). Then the nodes of tree B
(e.g. the Token Recycling template tree), in B's topological order, are inserted one by one:
node j of B maps to an output node: B's root to the output root; otherwise, with m = map(parent_j),
- m dropped -> j is dropped (its whole subtree is),
- m already has a child with j's token -> j maps onto that child (shared prefix, no duplicate),
- else, while fewer than N nodes are used, j is appended as a new child of m; else dropped.
So the output is the union of the two trees' root paths as a trie (no two siblings share a token),
in topological order, truncated to the budget with A first and B in its own priority order. Every
root-to-node path of either input that survives the budget is a path of the output, so verifying the
output accepts at least as much as verifying either input alone (within the budget).

Example: A = chain [r, x, y] (parents [-1, 0, 1]); B = [r, x, z, w] with parents [-1, 0, 0, 1]:
B1 (x) merges into A1, B2 (z) is appended as node 3 under the root, B3 (w) under A1 as node 4:
tokens [r, x, y, z, w], parents [-1, 0, 1, 0, 1], num_nodes 5 (with N = 4: [r, x, y, z]).

One program per sequence, sequential over B's nodes with the output tree held in registers (one
vector op per insertion, no memory round trips, no barriers). num_warps = 1: the per-insertion
reductions then stay within one warp. Cost O(T_B * N) lane operations per sequence.
Layout: a_tokens/a_parents [B, NA], num_a [B]; b_tokens/b_parents [B, NB], num_b [B] (0 or 1 = root
only); out tokens/parents [B, N], num_nodes [B]. Pad nodes get FILL_TOKEN and NO_PARENT.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.types import NO_PARENT, DraftTree

NO_NODE: int = -1  # a B node that was dropped (budget or dropped ancestor)
FILL_TOKEN: int = 0  # token of pad nodes: a valid id, because the runner embeds every node
_NO_PARENT = tl.constexpr(NO_PARENT)
_NO_NODE = tl.constexpr(NO_NODE)
_FILL_TOKEN = tl.constexpr(FILL_TOKEN)
_BIG = tl.constexpr(2147483647)


@triton.jit(do_not_specialize=["num_nodes_cap"])
def _merge_tree_kernel(
    a_tokens_ptr,  # [B, NA] int32
    a_parents_ptr,  # [B, NA] int32
    num_a_ptr,  # [B] int32
    b_tokens_ptr,  # [B, NB] int32
    b_parents_ptr,  # [B, NB] int32
    num_b_ptr,  # [B] int32
    tokens_ptr,  # [B, N] int32 (out)
    parents_ptr,  # [B, N] int32 (out)
    num_nodes_ptr,  # [B] int32 (out)
    stride_a_b,
    stride_b_b,
    stride_out_b,
    num_a_cap,  # NA
    num_b_cap,  # NB
    num_nodes_cap,  # N (budget)
    OUT_BLOCK: tl.constexpr,
    B_BLOCK: tl.constexpr,
):
    """One program per sequence: copy A, then insert B's nodes in order (trie merge)."""
    b = tl.program_id(0)
    ii = tl.arange(0, OUT_BLOCK)
    count = tl.minimum(tl.minimum(tl.load(num_a_ptr + b), num_a_cap), num_nodes_cap)
    count = tl.maximum(count, 1)
    in_a = ii < count
    out_tok = tl.load(a_tokens_ptr + b * stride_a_b + ii, mask=in_a, other=_FILL_TOKEN)
    out_par = tl.load(a_parents_ptr + b * stride_a_b + ii, mask=in_a, other=_NO_PARENT)
    jj = tl.arange(0, B_BLOCK)
    node_map = tl.where(jj == 0, 0, _NO_NODE)
    num_b = tl.minimum(tl.load(num_b_ptr + b), num_b_cap)
    j = num_b * 0 + 1
    while j < num_b:
        tok = tl.load(b_tokens_ptr + b * stride_b_b + j)
        par = tl.load(b_parents_ptr + b * stride_b_b + j)
        m = tl.sum(tl.where(jj == par, node_map, 0), axis=0)
        same = (ii > 0) & (ii < count) & (out_par == m) & (out_tok == tok)
        hit = tl.min(tl.where(same, ii, _BIG), axis=0)
        live = m >= 0
        has_hit = live & (hit < _BIG)
        add = live & (hit == _BIG) & (count < num_nodes_cap)
        new = tl.where(has_hit, hit, tl.where(add, count, _NO_NODE))
        slot = add & (ii == count)
        out_tok = tl.where(slot, tok, out_tok)
        out_par = tl.where(slot, m, out_par)
        node_map = tl.where(jj == j, new, node_map)
        count += add.to(tl.int32)
        j += 1
    in_row = ii < num_nodes_cap
    tl.store(tokens_ptr + b * stride_out_b + ii, out_tok, mask=in_row)
    tl.store(parents_ptr + b * stride_out_b + ii, out_par, mask=in_row)
    tl.store(num_nodes_ptr + b, count)


def _check(a_tokens, a_parents, num_a, b_tokens, b_parents, num_b, tokens, parents, num_nodes):
    R = tokens.shape[0]
    named = dict(a_tokens=a_tokens, a_parents=a_parents, b_tokens=b_tokens, b_parents=b_parents)
    named.update(tokens=tokens, parents=parents)
    for name, t in named.items():
        if t.dim() != 2 or t.shape[0] != R or t.dtype != torch.int32 or t.stride(1) != 1:
            raise ValueError(
                f"{name} {tuple(t.shape)} {t.dtype}: expected a row-contiguous [{R}, *] int32"
            )
    for name, t in dict(num_a=num_a, num_b=num_b, num_nodes=num_nodes).items():
        if t.shape != (R,) or t.dtype != torch.int32:
            raise ValueError(f"{name} {tuple(t.shape)} {t.dtype}: expected ({R},) int32")
    if a_parents.shape != a_tokens.shape or b_parents.shape != b_tokens.shape:
        raise ValueError(
            f"tokens/parents shapes disagree: A {tuple(a_tokens.shape)}/{tuple(a_parents.shape)}, "
            f"B {tuple(b_tokens.shape)}/{tuple(b_parents.shape)}"
        )
    if parents.shape != tokens.shape:
        raise ValueError(f"out tokens {tuple(tokens.shape)} and parents {tuple(parents.shape)}")


def merge_tree_triton(
    a_tokens: torch.Tensor,
    a_parents: torch.Tensor,
    num_a: torch.Tensor,
    b_tokens: torch.Tensor,
    b_parents: torch.Tensor,
    num_b: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
) -> None:
    """Trie-merge tree B into tree A, budget N = tokens.shape[1]; writes the out tree buffers."""
    _check(a_tokens, a_parents, num_a, b_tokens, b_parents, num_b, tokens, parents, num_nodes)
    if a_tokens.stride() != a_parents.stride() or b_tokens.stride() != b_parents.stride():
        raise ValueError("tokens and parents of each tree must share strides")
    if tokens.stride() != parents.stride():
        raise ValueError("out tokens and parents must share strides")
    R, N = tokens.shape
    _merge_tree_kernel[(R,)](
        a_tokens,
        a_parents,
        num_a,
        b_tokens,
        b_parents,
        num_b,
        tokens,
        parents,
        num_nodes,
        a_tokens.stride(0),
        b_tokens.stride(0),
        tokens.stride(0),
        a_tokens.shape[1],
        b_tokens.shape[1],
        N,
        OUT_BLOCK=triton.next_power_of_2(N),
        B_BLOCK=triton.next_power_of_2(b_tokens.shape[1]),
        num_warps=1,
    )


def merge_tree_ref(
    a_tokens: torch.Tensor,
    a_parents: torch.Tensor,
    num_a: torch.Tensor,
    b_tokens: torch.Tensor,
    b_parents: torch.Tensor,
    num_b: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
) -> None:
    """Reference: a dict of children per output node, B's nodes inserted in order."""
    _check(a_tokens, a_parents, num_a, b_tokens, b_parents, num_b, tokens, parents, num_nodes)
    R, N = tokens.shape
    out_tok = [[FILL_TOKEN] * N for _ in range(R)]
    out_par = [[NO_PARENT] * N for _ in range(R)]
    out_num = [0] * R
    for r in range(R):
        na = max(1, min(int(num_a[r]), a_tokens.shape[1], N))
        toks = a_tokens[r, :na].tolist()
        pars = a_parents[r, :na].tolist()
        children: dict[tuple[int, int], int] = {}
        for i in range(1, na):
            children.setdefault((pars[i], toks[i]), i)
        node_map = {0: 0}
        for j in range(1, min(int(num_b[r]), b_tokens.shape[1])):
            m = node_map.get(int(b_parents[r, j]), NO_NODE)
            tok = int(b_tokens[r, j])
            if m == NO_NODE:
                node_map[j] = NO_NODE
            elif (m, tok) in children:
                node_map[j] = children[(m, tok)]
            elif len(toks) < N:
                children[(m, tok)] = len(toks)
                node_map[j] = len(toks)
                toks.append(tok)
                pars.append(m)
            else:
                node_map[j] = NO_NODE
        out_tok[r][: len(toks)] = toks
        out_par[r][: len(pars)] = pars
        out_num[r] = len(toks)
    tokens.copy_(torch.tensor(out_tok, dtype=torch.int32))
    parents.copy_(torch.tensor(out_par, dtype=torch.int32))
    num_nodes.copy_(torch.tensor(out_num, dtype=torch.int32))


def merge_tree(
    a_tokens: torch.Tensor,
    a_parents: torch.Tensor,
    num_a: torch.Tensor,
    b_tokens: torch.Tensor,
    b_parents: torch.Tensor,
    num_b: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
) -> None:
    fn = merge_tree_triton if use_triton(tokens) else merge_tree_ref
    fn(a_tokens, a_parents, num_a, b_tokens, b_parents, num_b, tokens, parents, num_nodes)


def merge_trees(a: DraftTree, b: DraftTree, out: DraftTree) -> None:
    """`merge_tree` on the drafters' bundles: tree `b` merged into tree `a`, written to `out`."""
    merge_tree(
        a.tokens, a.parents, a.num_nodes, b.tokens, b.parents, b.num_nodes,
        out.tokens, out.parents, out.num_nodes,
    )  # fmt: skip


_SIG = {
    "a_tokens_ptr": "*i32",
    "a_parents_ptr": "*i32",
    "num_a_ptr": "*i32",
    "b_tokens_ptr": "*i32",
    "b_parents_ptr": "*i32",
    "num_b_ptr": "*i32",
    "tokens_ptr": "*i32",
    "parents_ptr": "*i32",
    "num_nodes_ptr": "*i32",
    "stride_a_b": "i32",
    "stride_b_b": "i32",
    "stride_out_b": "i32",
    "num_a_cap": "i32",
    "num_b_cap": "i32",
    "num_nodes_cap": "i32",
    "OUT_BLOCK": "constexpr",
    "B_BLOCK": "constexpr",
}
AOT_SPECS = [
    AotSpec(_merge_tree_kernel, _SIG, {"OUT_BLOCK": 128, "B_BLOCK": 128}, num_warps=1),
    AotSpec(_merge_tree_kernel, _SIG, {"OUT_BLOCK": 8, "B_BLOCK": 8}, num_warps=1),
]
