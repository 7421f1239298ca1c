"""Token Recycling (Luo et al. 2024, "Turning Trash into Treasure"): adjacency table, template tree.

Two ops of one family:

`token_recycling_update`: the adjacency table `adj [V, K]` holds, for every token v, the top-K
successors the target model predicted the last time v was verified. After each step, for every
verified tree node i of sequence b (i < num_valid[b]) with token v = tokens[b, i]:
`adj[v, :] = topk[b, i, :]` (top-K ids of logits[b, i], computed by the caller with torch.topk).
The table is shared by the whole batch. When several nodes carry the same token, the node with the
largest flat index b * N + i wins (what the sequential reference does: later writes overwrite).
On the GPU this is made deterministic in two launches: `claim` takes `atomic_max(winner[v], b*N+i)`
into a scratch `winner [V]` (all NO_CLAIM = -1), then `write` lets only the winner copy its row and
reset `winner[v]` to NO_CLAIM (losers compare against their own index, never -1, so the reset cannot
mislead them). Cost: B*N*K int32 written at most.

`token_recycling_fill`: a static template tree with T nodes (node 0 = root, parents in topological
order) in which node i is reached from the root by the path of child ranks `paths[i, 0:depth[i]]`
(rank r = the r-th most likely successor). Its token is found by walking the table:
`tok = root; for r in path: tok = adj[tok, r]`. All nodes walk at once (MAX_DEPTH dependent gathers,
no barriers); the template's parents are copied alongside and num_nodes = T.

Example (K = 2): adj[5] = [6, 7], adj[6] = [8, 9], root 5, template paths [[], [0], [1], [0, 0]],
parents [-1, 0, 0, 1] -> tokens [5, 6, 7, 8].

Layout: adj [V, K] int32, tokens/parents [B, N] int32, topk [B, N, K] int32, num_valid [B] int32,
root [B] int32, paths [T, MAX_DEPTH] int32 (NO_RANK = -1 past depth), depth [T] int32,
template parents [T] int32. Pad nodes (T <= i < N) get FILL_TOKEN and NO_PARENT.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.types import NO_PARENT

NO_CLAIM: int = -1
NO_RANK: int = -1
FILL_TOKEN: int = 0  # token of pad nodes: a valid id, because the runner embeds every node
_NO_PARENT = tl.constexpr(NO_PARENT)
_NO_CLAIM = tl.constexpr(NO_CLAIM)
_FILL_TOKEN = tl.constexpr(FILL_TOKEN)


@triton.jit
def _token_recycling_claim_kernel(
    tokens_ptr,  # [B, N] int32
    num_valid_ptr,  # [B] int32
    winner_ptr,  # [V] int32 (in/out), NO_CLAIM outside a claim/write pair
    stride_tokens_b,
    num_nodes_cap,  # N
    NODE_BLOCK: tl.constexpr,
):
    """One program per sequence: claim each valid node's token row for the largest flat index."""
    b = tl.program_id(0)
    i = tl.arange(0, NODE_BLOCK)
    valid = i < tl.load(num_valid_ptr + b)
    tok = tl.load(tokens_ptr + b * stride_tokens_b + i, mask=valid, other=0)
    tl.atomic_max(winner_ptr + tok, b * num_nodes_cap + i, mask=valid)


@triton.jit
def _token_recycling_write_kernel(
    tokens_ptr,  # [B, N] int32
    num_valid_ptr,  # [B] int32
    topk_ptr,  # [B, N, K] int32
    adj_ptr,  # [V, K] int32 (in/out)
    winner_ptr,  # [V] int32 (in/out): reset to NO_CLAIM by each winner
    stride_tokens_b,
    stride_topk_b,
    stride_topk_n,
    num_nodes_cap,  # N
    K: tl.constexpr,
    NODE_BLOCK: tl.constexpr,
):
    """One program per sequence: winners copy their top-K row into adj and release the claim."""
    b = tl.program_id(0)
    i = tl.arange(0, NODE_BLOCK)
    valid = i < tl.load(num_valid_ptr + b)
    tok = tl.load(tokens_ptr + b * stride_tokens_b + i, mask=valid, other=0)
    flat = b * num_nodes_cap + i
    owner = tl.load(winner_ptr + tok, mask=valid, other=_NO_CLAIM)
    is_winner = valid & (owner == flat)
    k = tl.arange(0, K)
    row = tl.load(
        topk_ptr + b * stride_topk_b + i[:, None] * stride_topk_n + k[None, :],
        mask=is_winner[:, None],
        other=0,
    )
    tl.store(adj_ptr + tok[:, None] * K + k[None, :], row, mask=is_winner[:, None])
    tl.store(winner_ptr + tok, tl.full([NODE_BLOCK], _NO_CLAIM, tl.int32), mask=is_winner)


@triton.jit
def _token_recycling_fill_kernel(
    adj_ptr,  # [V, K] int32
    root_ptr,  # [B] int32
    paths_ptr,  # [T, MAX_DEPTH] int32, NO_RANK past depth
    depth_ptr,  # [T] int32
    tpl_parents_ptr,  # [T] int32
    tokens_ptr,  # [B, N] int32 (out)
    parents_ptr,  # [B, N] int32 (out)
    num_nodes_ptr,  # [B] int32 (out)
    stride_tree_b,
    num_tpl,  # T <= N
    num_nodes_cap,  # N
    K: tl.constexpr,
    MAX_DEPTH: tl.constexpr,
    NODE_BLOCK: tl.constexpr,
):
    """One program per sequence: every template node walks its rank path from the root at once."""
    b = tl.program_id(0)
    i = tl.arange(0, NODE_BLOCK)
    in_tpl = i < num_tpl
    depth = tl.load(depth_ptr + i, mask=in_tpl, other=0)
    tok = tl.zeros([NODE_BLOCK], dtype=tl.int32) + tl.load(root_ptr + b)
    for d in tl.static_range(MAX_DEPTH):
        walking = in_tpl & (d < depth)
        rank = tl.load(paths_ptr + i * MAX_DEPTH + d, mask=walking, other=0)
        nxt = tl.load(adj_ptr + tok * K + rank, mask=walking, other=0)
        tok = tl.where(walking, nxt, tok)
    par = tl.load(tpl_parents_ptr + i, mask=in_tpl, other=_NO_PARENT)
    tok = tl.where(in_tpl, tok, _FILL_TOKEN)
    in_row = i < num_nodes_cap
    tl.store(tokens_ptr + b * stride_tree_b + i, tok, mask=in_row)
    tl.store(parents_ptr + b * stride_tree_b + i, par, mask=in_row)
    tl.store(num_nodes_ptr + b, num_tpl)


def _check_update(adj, tokens, topk, num_valid, winner):
    if adj.dim() != 2 or adj.dtype != torch.int32 or not adj.is_contiguous():
        raise ValueError(
            f"adj must be a contiguous [V, K] int32, got {tuple(adj.shape)} {adj.dtype}"
        )
    V, K = adj.shape
    if tokens.dim() != 2 or tokens.dtype != torch.int32:
        raise ValueError(f"tokens must be [B, N] int32, got {tuple(tokens.shape)} {tokens.dtype}")
    B, N = tokens.shape
    if topk.shape != (B, N, K) or topk.dtype != torch.int32:
        raise ValueError(
            f"topk {tuple(topk.shape)} {topk.dtype}: expected ({B}, {N}, {K}) int32 "
            f"(tokens {tuple(tokens.shape)}, adj {tuple(adj.shape)})"
        )
    if num_valid.shape != (B,) or num_valid.dtype != torch.int32:
        raise ValueError(f"num_valid {tuple(num_valid.shape)}: expected ({B},) int32")
    if winner is not None and (winner.shape != (V,) or winner.dtype != torch.int32):
        raise ValueError(f"winner {tuple(winner.shape)}: expected ({V},) int32 scratch")


def token_recycling_update_triton(
    adj: torch.Tensor,
    tokens: torch.Tensor,
    topk: torch.Tensor,
    num_valid: torch.Tensor,
    winner: torch.Tensor,
) -> torch.Tensor:
    """adj[tokens[b, i]] = topk[b, i] for i < num_valid[b], largest b*N+i winning; in place.

    `winner` is a [V] int32 scratch filled with NO_CLAIM; it is NO_CLAIM again on return."""
    _check_update(adj, tokens, topk, num_valid, winner)
    K = adj.shape[1]
    if K & (K - 1):
        raise ValueError(f"adj width K={K} must be a power of two")
    if tokens.stride(1) != 1 or topk.stride(2) != 1:
        raise ValueError("tokens and topk must be contiguous in their last dimension")
    B, N = tokens.shape
    block = triton.next_power_of_2(N)
    _token_recycling_claim_kernel[(B,)](tokens, num_valid, winner, tokens.stride(0), N, block)
    _token_recycling_write_kernel[(B,)](
        tokens,
        num_valid,
        topk,
        adj,
        winner,
        tokens.stride(0),
        topk.stride(0),
        topk.stride(1),
        N,
        K=K,
        NODE_BLOCK=block,
    )
    return adj


def token_recycling_update_ref(
    adj: torch.Tensor,
    tokens: torch.Tensor,
    topk: torch.Tensor,
    num_valid: torch.Tensor,
    winner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sequential reference: visit (b, i) in increasing order, later writes overwrite."""
    _check_update(adj, tokens, topk, num_valid, winner)
    toks = tokens.tolist()
    nv = num_valid.tolist()
    for b in range(tokens.shape[0]):
        for i in range(nv[b]):
            adj[toks[b][i]] = topk[b, i]
    return adj


def token_recycling_update(
    adj: torch.Tensor,
    tokens: torch.Tensor,
    topk: torch.Tensor,
    num_valid: torch.Tensor,
    winner: torch.Tensor,
) -> torch.Tensor:
    fn = token_recycling_update_triton if use_triton(adj) else token_recycling_update_ref
    return fn(adj, tokens, topk, num_valid, winner)


def _check_fill(adj, root, paths, depth, tpl_parents, tokens, parents, num_nodes):
    if adj.dim() != 2 or adj.dtype != torch.int32 or not adj.is_contiguous():
        raise ValueError(
            f"adj must be a contiguous [V, K] int32, got {tuple(adj.shape)} {adj.dtype}"
        )
    B = root.shape[0]
    if root.shape != (B,) or tokens.shape[0] != B or parents.shape != tokens.shape:
        raise ValueError(
            f"root {tuple(root.shape)}, tokens {tuple(tokens.shape)}, "
            f"parents {tuple(parents.shape)} disagree on num_reqs"
        )
    if num_nodes.shape != (B,):
        raise ValueError(f"num_nodes {tuple(num_nodes.shape)}: expected ({B},)")
    T = depth.shape[0]
    if paths.dim() != 2 or paths.shape[0] != T or tpl_parents.shape != (T,):
        raise ValueError(
            f"template paths {tuple(paths.shape)}, depth {tuple(depth.shape)}, parents "
            f"{tuple(tpl_parents.shape)} disagree on the number of template nodes"
        )
    if T > tokens.shape[1]:
        raise ValueError(f"template has {T} nodes, tree buffers only {tokens.shape[1]}")


def token_recycling_fill_triton(
    adj: torch.Tensor,
    root: torch.Tensor,
    paths: torch.Tensor,
    depth: torch.Tensor,
    tpl_parents: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
) -> None:
    """Fill the template tree for every sequence from its root token (tree buffers [B, N] out)."""
    _check_fill(adj, root, paths, depth, tpl_parents, tokens, parents, num_nodes)
    if not (
        paths.is_contiguous() and tokens.stride(1) == 1 and tokens.stride() == parents.stride()
    ):
        raise ValueError(
            "paths and tree buffers must be row-contiguous (tokens/parents same strides)"
        )
    B, N = tokens.shape
    _token_recycling_fill_kernel[(B,)](
        adj,
        root,
        paths,
        depth,
        tpl_parents,
        tokens,
        parents,
        num_nodes,
        tokens.stride(0),
        depth.shape[0],
        N,
        K=adj.shape[1],
        MAX_DEPTH=paths.shape[1],
        NODE_BLOCK=triton.next_power_of_2(N),
    )


def token_recycling_fill_ref(
    adj: torch.Tensor,
    root: torch.Tensor,
    paths: torch.Tensor,
    depth: torch.Tensor,
    tpl_parents: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
) -> None:
    """Reference: node by node in topological order, token = adj[token of parent, own rank]
    (one gather over the batch per node; the table is never copied whole)."""
    _check_fill(adj, root, paths, depth, tpl_parents, tokens, parents, num_nodes)
    T = depth.shape[0]
    tpar = tpl_parents.tolist()
    dep = depth.tolist()
    ranks = [int(paths[i, dep[i] - 1]) if dep[i] > 0 else NO_RANK for i in range(T)]
    B, N = tokens.shape
    out = torch.full((B, N), FILL_TOKEN, dtype=torch.int32, device=tokens.device)
    out[:, 0] = root
    for i in range(1, T):
        out[:, i] = adj[out[:, tpar[i]].long(), ranks[i]]
    tokens.copy_(out)
    parents.fill_(NO_PARENT)
    parents[:, :T] = tpl_parents
    num_nodes.fill_(T)


def token_recycling_fill(
    adj: torch.Tensor,
    root: torch.Tensor,
    paths: torch.Tensor,
    depth: torch.Tensor,
    tpl_parents: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
) -> None:
    fn = token_recycling_fill_triton if use_triton(adj) else token_recycling_fill_ref
    fn(adj, root, paths, depth, tpl_parents, tokens, parents, num_nodes)


AOT_SPECS = [
    AotSpec(
        _token_recycling_claim_kernel,
        {
            "tokens_ptr": "*i32",
            "num_valid_ptr": "*i32",
            "winner_ptr": "*i32",
            "stride_tokens_b": "i32",
            "num_nodes_cap": "i32",
            "NODE_BLOCK": "constexpr",
        },
        {"NODE_BLOCK": 128},
    ),
    AotSpec(
        _token_recycling_write_kernel,
        {
            "tokens_ptr": "*i32",
            "num_valid_ptr": "*i32",
            "topk_ptr": "*i32",
            "adj_ptr": "*i32",
            "winner_ptr": "*i32",
            "stride_tokens_b": "i32",
            "stride_topk_b": "i32",
            "stride_topk_n": "i32",
            "num_nodes_cap": "i32",
            "K": "constexpr",
            "NODE_BLOCK": "constexpr",
        },
        {"K": 8, "NODE_BLOCK": 128},
    ),
    AotSpec(
        _token_recycling_fill_kernel,
        {
            "adj_ptr": "*i32",
            "root_ptr": "*i32",
            "paths_ptr": "*i32",
            "depth_ptr": "*i32",
            "tpl_parents_ptr": "*i32",
            "tokens_ptr": "*i32",
            "parents_ptr": "*i32",
            "num_nodes_ptr": "*i32",
            "stride_tree_b": "i32",
            "num_tpl": "i32",
            "num_nodes_cap": "i32",
            "K": "constexpr",
            "MAX_DEPTH": "constexpr",
            "NODE_BLOCK": "constexpr",
        },
        {"K": 8, "MAX_DEPTH": 6, "NODE_BLOCK": 128},
    ),
]
