"""Verification of a draft tree against the target model's logits: greedy and sampling.

Vocabulary (samgpu/types.py): node 0 is the root (last committed token); `logits[b, i]` is the
target's distribution for the token after node i. Outputs (`VerifyOutput`):
- `accepted_nodes [B, K] int32`: root + accepted path (node indices), NO_PARENT-padded,
  K = max_depth + 1;
- `num_accepted [B] int32`: accepted draft nodes (root excluded), 0 <= num_accepted <= K - 1;
- `bonus [B] int32`: the token after the last accepted node (greedy: its argmax; sampling: drawn
  from its distribution, minus the children rejected there: the *recovered* token).

Greedy (`verify_greedy`): argmax over the vocabulary with torch (first max on ties, exactly
torch.argmax), then one program per sequence walks from the root: move to the child whose token
equals the current node's argmax (lowest index if siblings repeat a token), until none does or depth
K - 1 is reached.
Example: tokens [C, D, E, X], parents [-1, 0, 1, 0], argmax [D, E, F, .] -> accepted [0, 1, 2],
num_accepted 2, bonus F.

Sampling (`verify_sample`, drafts are deterministic, q = one-hot): `sampling_probs` turns logits
into p with HF semantics (temperature, then top-k, then top-p, then softmax). At node u the children
c1 < c2 < ... (index order; a child repeating an earlier sibling's token is skipped) are tried in
turn: c_j is accepted iff uniform[b, c_j] * (1 - S_j) < p_u(c_j), with S_j the mass of the siblings
already rejected; this is "accept with probability p'(c_j), else zero it and renormalise" without
dividing. On acceptance the walk moves to c_j; when every child of u is rejected (or u is a leaf),
the bonus is drawn from p_u with the rejected children zeroed, by the exponential race
argmax_v p(v) / E_v (E ~ Exp(1), gpt-fast's no-sync categorical sample). The tokens emitted by
a step are then distributed exactly as ancestral sampling from p (recursive rejection sampling,
SpecInfer). Randomness comes in as `uniforms [B, N]` and `exponentials [B, V]`, drawn by the caller
from a seeded generator into preallocated buffers (CUDA-graph safe, reproducible, and identical for
kernel and reference, which makes their outputs comparable exactly).
`probs` is in/out: on return, the tried (rejected) children of the final node are zeroed in its row.

Complexity per sequence: greedy O(K N) after the O(N V) argmax; sampling O(N^2 + K N + V).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.types import NO_PARENT, VerifyOutput

_BLOCK_V: int = 1024


@triton.jit
def _verify_greedy_kernel(
    argmax_ptr,  # [B, N] int64; target argmax after each node
    tokens_ptr,  # [B, N] int32; draft tokens
    parents_ptr,  # [B, N] int32; NO_PARENT for root
    num_nodes_ptr,  # [B] int32
    accepted_ptr,  # [B, K] int32 (out)
    num_accepted_ptr,  # [B] int32 (out)
    bonus_ptr,  # [B] int32 (out)
    MAX_NODES: tl.constexpr,  # N
    BLOCK_N: tl.constexpr,  # next power of two >= N
    K: tl.constexpr,  # max_depth + 1
):
    """One program per sequence; the node set stays in registers, one tree level per iteration."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    num_nodes = tl.load(num_nodes_ptr + b)
    is_node = offs < num_nodes
    tokens = tl.load(tokens_ptr + b * MAX_NODES + offs, mask=is_node, other=-1)
    parents = tl.load(parents_ptr + b * MAX_NODES + offs, mask=is_node, other=-2)
    target = tl.load(argmax_ptr + b * MAX_NODES + offs, mask=offs < MAX_NODES, other=0)
    target = target.to(tl.int32)
    cur = tl.zeros([], dtype=tl.int32)
    going = tl.full([], 1, dtype=tl.int32)
    num = tl.zeros([], dtype=tl.int32)
    tl.store(accepted_ptr + b * K, cur)
    for d in range(1, K):
        want = tl.sum(tl.where(offs == cur, target, 0), axis=0)
        is_match = (parents == cur) & (tokens == want)
        child = tl.min(tl.where(is_match, offs, BLOCK_N), axis=0).to(tl.int32)
        found = tl.where(child < BLOCK_N, going, 0)
        cur = tl.where(found > 0, child, cur)
        num += found
        going = found
        tl.store(accepted_ptr + b * K + d, tl.where(found > 0, child, -1))
    tl.store(num_accepted_ptr + b, num)
    tl.store(bonus_ptr + b, tl.sum(tl.where(offs == cur, target, 0), axis=0))


@triton.jit
def _verify_sample_kernel(
    probs_ptr,  # [B, N, V] float32 (in/out: the final node's rejected children are zeroed)
    tokens_ptr,  # [B, N] int32; draft tokens
    parents_ptr,  # [B, N] int32; NO_PARENT for root
    num_nodes_ptr,  # [B] int32
    uniforms_ptr,  # [B, N] float32 in [0, 1); uniforms[b, c] decides child c
    exponentials_ptr,  # [B, V] float32, Exp(1) draws for the bonus sample
    accepted_ptr,  # [B, K] int32 (out)
    num_accepted_ptr,  # [B] int32 (out)
    bonus_ptr,  # [B] int32 (out)
    vocab_size,  # V
    MAX_NODES: tl.constexpr,  # N
    BLOCK_N: tl.constexpr,  # next power of two >= N
    K: tl.constexpr,  # max_depth + 1
    BLOCK_V: tl.constexpr,
):
    """One program per sequence: recursive rejection down the tree, then one pass over V."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    num_nodes = tl.load(num_nodes_ptr + b)
    is_node = offs < num_nodes
    tokens = tl.load(tokens_ptr + b * MAX_NODES + offs, mask=is_node, other=-1)
    parents = tl.load(parents_ptr + b * MAX_NODES + offs, mask=is_node, other=-2)
    uniforms = tl.load(uniforms_ptr + b * MAX_NODES + offs, mask=is_node, other=1.0)
    # A child repeating an earlier sibling's token is never tried (its token is already zeroed).
    tok_col = tl.load(tokens_ptr + b * MAX_NODES + offs[None, :], mask=offs[None, :] < num_nodes)
    par_col = tl.load(
        parents_ptr + b * MAX_NODES + offs[None, :], mask=offs[None, :] < num_nodes, other=-3
    )
    same = (par_col == parents[:, None]) & (tok_col == tokens[:, None])
    same = same & (offs[None, :] < offs[:, None])
    is_first = tl.max(same.to(tl.int32), axis=1) == 0
    row_base = probs_ptr + b * MAX_NODES * vocab_size
    cur = tl.zeros([], dtype=tl.int32)
    going = tl.full([], 1, dtype=tl.int32)
    tried = tl.zeros([], dtype=tl.int32)  # were the final node's children tried (and rejected)?
    num = tl.zeros([], dtype=tl.int32)
    tl.store(accepted_ptr + b * K, cur)
    for d in range(1, K):
        is_child = (parents == cur) & is_first
        p_child = tl.load(row_base + cur * vocab_size + tokens, mask=is_child, other=0.0)
        rejected_mass = tl.cumsum(p_child, axis=0) - p_child
        is_accept = is_child & (uniforms * (1.0 - rejected_mass) < p_child)
        child = tl.min(tl.where(is_accept, offs, BLOCK_N), axis=0).to(tl.int32)
        found = tl.where(child < BLOCK_N, going, 0)
        tried = tl.where(going > found, 1, tried)
        cur = tl.where(found > 0, child, cur)
        num += found
        going = found
        tl.store(accepted_ptr + b * K + d, tl.where(found > 0, child, -1))
    tl.store(num_accepted_ptr + b, num)
    # Residual at the final node: zero its rejected children (none if it is a leaf or the walk
    # stopped at depth K - 1 with all accepted), then sample by the exponential race.
    cur_row = row_base + cur * vocab_size
    # (the interpreter mishandles scalar-bool & vector-bool: `tried` picks an impossible parent)
    is_child = (parents == tl.where(tried > 0, cur, -4)) & is_first
    tl.store(cur_row + tokens, tl.zeros([BLOCK_N], dtype=tl.float32), mask=is_child)
    tl.debug_barrier()  # the zeros above must be visible to the threads reading the row below
    offs_v = tl.arange(0, BLOCK_V)
    best_score = tl.full([], -2.0, dtype=tl.float32)
    best_token = tl.zeros([], dtype=tl.int32)
    for v0 in range(0, vocab_size, BLOCK_V):
        in_vocab = v0 + offs_v < vocab_size
        p = tl.load(cur_row + v0 + offs_v, mask=in_vocab, other=0.0)
        e = tl.load(exponentials_ptr + b * vocab_size + v0 + offs_v, mask=in_vocab, other=1.0)
        score = tl.where(p > 0.0, p / e, -1.0)
        block_best = tl.max(score, axis=0)
        block_token = (v0 + tl.argmax(score, axis=0)).to(tl.int32)
        is_better = block_best > best_score  # strict: the first maximum wins, as torch.argmax
        best_token = tl.where(is_better, block_token, best_token)
        best_score = tl.where(is_better, block_best, best_score)
    tl.store(bonus_ptr + b, best_token)


def _check_tree(name, logits, tokens, parents, num_nodes, out, max_depth):
    if logits.ndim != 3:
        raise ValueError(f"{name} must be [B, N, V], got {tuple(logits.shape)}")
    num_reqs, max_nodes, _ = logits.shape
    for t, tname in ((tokens, "tokens"), (parents, "parents")):
        if t.shape != (num_reqs, max_nodes) or t.dtype != torch.int32:
            raise ValueError(
                f"{tname} {tuple(t.shape)} {t.dtype} must be [B, N] int32 with "
                f"{name} {tuple(logits.shape)}"
            )
    if num_nodes.shape != (num_reqs,) or num_nodes.dtype != torch.int32:
        raise ValueError(f"num_nodes {tuple(num_nodes.shape)} must be [{num_reqs}] int32")
    if out is None:
        if max_depth is None:
            raise ValueError("give max_depth (K = max_depth + 1 accepted slots) or out=")
        return VerifyOutput.empty(num_reqs, max_nodes, max_depth, logits.device)
    if out.accepted_nodes.shape[0] != num_reqs or out.argmax.shape != (num_reqs, max_nodes):
        raise ValueError(
            f"out buffers accepted_nodes {tuple(out.accepted_nodes.shape)}, argmax "
            f"{tuple(out.argmax.shape)} do not fit {name} {tuple(logits.shape)}"
        )
    return out


def verify_greedy_triton(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    out = _check_tree("logits", logits, tokens, parents, num_nodes, out, max_depth)
    num_reqs, max_nodes, _ = logits.shape
    torch.argmax(logits, dim=-1, out=out.argmax)
    _verify_greedy_kernel[(num_reqs,)](
        out.argmax,
        tokens,
        parents,
        num_nodes,
        out.accepted_nodes,
        out.num_accepted,
        out.bonus,
        MAX_NODES=max_nodes,
        BLOCK_N=triton.next_power_of_2(max_nodes),
        K=out.accepted_nodes.shape[1],
    )
    return out


def verify_greedy_ref(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    """Reference: walk down while some child's token equals the current node's argmax."""
    out = _check_tree("logits", logits, tokens, parents, num_nodes, out, max_depth)
    num_reqs, max_nodes, _ = logits.shape
    k_slots = out.accepted_nodes.shape[1]
    torch.argmax(logits, dim=-1, out=out.argmax)
    target, toks, pars = out.argmax.tolist(), tokens.tolist(), parents.tolist()
    accepted = torch.full((num_reqs, k_slots), NO_PARENT, dtype=torch.int32)
    num_acc = torch.zeros(num_reqs, dtype=torch.int32)
    bonus = torch.zeros(num_reqs, dtype=torch.int32)
    for b in range(num_reqs):
        path = [0]
        while len(path) < k_slots:
            cur = path[-1]
            children = [
                i
                for i in range(1, int(num_nodes[b]))
                if pars[b][i] == cur and toks[b][i] == target[b][cur]
            ]
            if not children:
                break
            path.append(children[0])
        accepted[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        num_acc[b] = len(path) - 1
        bonus[b] = target[b][path[-1]]
    out.accepted_nodes.copy_(accepted)
    out.num_accepted.copy_(num_acc)
    out.bonus.copy_(bonus)
    return out


def verify_greedy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    impl = verify_greedy_triton if use_triton(logits) else verify_greedy_ref
    return impl(logits, tokens, parents, num_nodes, max_depth=max_depth, out=out)


def sampling_probs(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Target probabilities for sampling, HF `generate` semantics: logits / temperature, then top-k
    (keep scores >= the k-th largest; 0 disables), then top-p (drop the smallest tokens whose
    cumulative probability is <= 1 - top_p, always keeping the most likely; 1.0 disables), softmax.
    Pure torch, no host sync; `out` [B, N, V] float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k} top_p={top_p}")
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = cum <= 1.0 - top_p
        sorted_remove[..., -1:] = False
        remove = sorted_remove.scatter(-1, sorted_idx, sorted_remove)
        scores = scores.masked_fill(remove, float("-inf"))
    if out is None:
        return torch.softmax(scores, dim=-1)
    return torch.softmax(scores, dim=-1, out=out)


def _check_random(probs, uniforms, exponentials):
    num_reqs, max_nodes, vocab_size = probs.shape
    if probs.dtype != torch.float32 or not probs.is_contiguous():
        raise ValueError(f"probs must be contiguous float32, got {probs.dtype}")
    if uniforms.shape != (num_reqs, max_nodes) or uniforms.dtype != torch.float32:
        raise ValueError(
            f"uniforms {tuple(uniforms.shape)} {uniforms.dtype} must be [B, N] float32 "
            f"with probs {tuple(probs.shape)}"
        )
    if exponentials.shape != (num_reqs, vocab_size) or exponentials.dtype != torch.float32:
        raise ValueError(
            f"exponentials {tuple(exponentials.shape)} {exponentials.dtype} must be [B, V] "
            f"float32 with probs {tuple(probs.shape)}"
        )


def verify_sample_triton(
    probs: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    out = _check_tree("probs", probs, tokens, parents, num_nodes, out, max_depth)
    _check_random(probs, uniforms, exponentials)
    num_reqs, max_nodes, vocab_size = probs.shape
    _verify_sample_kernel[(num_reqs,)](
        probs,
        tokens,
        parents,
        num_nodes,
        uniforms,
        exponentials,
        out.accepted_nodes,
        out.num_accepted,
        out.bonus,
        vocab_size,
        MAX_NODES=max_nodes,
        BLOCK_N=triton.next_power_of_2(max_nodes),
        K=out.accepted_nodes.shape[1],
        BLOCK_V=_BLOCK_V,
    )
    return out


def verify_sample_ref(
    probs: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    """Reference: recursive rejection, one child at a time, float32 as the kernel."""
    out = _check_tree("probs", probs, tokens, parents, num_nodes, out, max_depth)
    _check_random(probs, uniforms, exponentials)
    num_reqs = probs.shape[0]
    k_slots = out.accepted_nodes.shape[1]
    toks, pars = tokens.tolist(), parents.tolist()
    accepted = torch.full((num_reqs, k_slots), NO_PARENT, dtype=torch.int32)
    num_acc = torch.zeros(num_reqs, dtype=torch.int32)
    bonus = torch.zeros(num_reqs, dtype=torch.int32)
    for b in range(num_reqs):
        n = int(num_nodes[b])
        path = [0]
        while True:
            cur = path[-1]
            children, seen = [], set()
            for i in range(1, n):
                if pars[b][i] == cur and toks[b][i] not in seen:
                    children.append(i)
                    seen.add(toks[b][i])
            if len(path) == k_slots:  # depth limit: children untried, nothing zeroed
                break
            rejected_mass = torch.zeros((), dtype=torch.float32)
            chosen = None
            for c in children:
                p_c = probs[b, cur, toks[b][c]]
                if uniforms[b, c] * (1.0 - rejected_mass) < p_c:
                    chosen = c
                    break
                rejected_mass = rejected_mass + p_c
            if chosen is None:
                for c in children:
                    probs[b, cur, toks[b][c]] = 0.0
                break
            path.append(chosen)
        p = probs[b, path[-1]]
        score = torch.where(p > 0, p / exponentials[b], torch.full_like(p, -1.0))
        accepted[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        num_acc[b] = len(path) - 1
        bonus[b] = int(torch.argmax(score))
    out.accepted_nodes.copy_(accepted)
    out.num_accepted.copy_(num_acc)
    out.bonus.copy_(bonus)
    return out


def verify_sample(
    probs: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    impl = verify_sample_triton if use_triton(probs) else verify_sample_ref
    return impl(
        probs, tokens, parents, num_nodes, uniforms, exponentials, max_depth=max_depth, out=out
    )


_GREEDY_SIG = {
    "argmax_ptr": "*i64",
    "tokens_ptr": "*i32",
    "parents_ptr": "*i32",
    "num_nodes_ptr": "*i32",
    "accepted_ptr": "*i32",
    "num_accepted_ptr": "*i32",
    "bonus_ptr": "*i32",
    "MAX_NODES": "constexpr",
    "BLOCK_N": "constexpr",
    "K": "constexpr",
}
_SAMPLE_SIG = {
    "probs_ptr": "*fp32",
    "tokens_ptr": "*i32",
    "parents_ptr": "*i32",
    "num_nodes_ptr": "*i32",
    "uniforms_ptr": "*fp32",
    "exponentials_ptr": "*fp32",
    "accepted_ptr": "*i32",
    "num_accepted_ptr": "*i32",
    "bonus_ptr": "*i32",
    "vocab_size": "i32",
    "MAX_NODES": "constexpr",
    "BLOCK_N": "constexpr",
    "K": "constexpr",
    "BLOCK_V": "constexpr",
}
_SHAPES = [(1, 1), (7, 4), (64, 17), (80, 9), (128, 65)]  # (N, K)
AOT_SPECS = [
    AotSpec(
        _verify_greedy_kernel,
        _GREEDY_SIG,
        {"MAX_NODES": n, "BLOCK_N": triton.next_power_of_2(n), "K": k},
    )
    for n, k in _SHAPES
] + [
    AotSpec(
        _verify_sample_kernel,
        _SAMPLE_SIG,
        {"MAX_NODES": n, "BLOCK_N": triton.next_power_of_2(n), "K": k, "BLOCK_V": _BLOCK_V},
    )
    for n, k in _SHAPES
]
