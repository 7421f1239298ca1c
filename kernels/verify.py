"""Verification of a draft tree against the target model's logits: greedy and sampling.

Vocabulary (samgpu/types.py): node 0 is the root (last committed token); `logits[b, i]` is the
target's distribution for the token after node i. Outputs (`VerifyOutput`):
- `accepted_nodes [B, K] int32`: root + accepted path (node indices), NO_PARENT-padded,
  K = max_depth + 1;
- `num_accepted [B] int32`: accepted draft nodes (root excluded), 0 <= num_accepted <= K - 1;
- `bonus [B] int32`: the token after the last accepted node (greedy: its argmax; sampling: the
  token its distribution drew);
- `argmax [B, N] int64`: each node's argmax or race winner (the reference races only the nodes
  its walk visits and leaves -1 elsewhere).

Greedy (`verify_greedy`): argmax over the vocabulary with torch (first max on ties, exactly
torch.argmax), then one program per sequence walks from the root: move to the child whose token
equals the current node's argmax (lowest index if siblings repeat a token), until none does or depth
K - 1 is reached.
Example: tokens [C, D, E, X], parents [-1, 0, 1, 0], argmax [D, E, F, .] -> accepted [0, 1, 2],
num_accepted 2, bonus F.

Sampling (`verify_sample`): `sampling_probs` turns logits into p with HF semantics (temperature,
then top-k, then top-p, then softmax); `race_tokens_triton` (kernels/randoms.py) draws each node's
token from p by an exponential race on noise keyed by (seed, request key, position), and the greedy
walk runs on those winners: a child is accepted iff its token is what its parent's distribution
drew. Each emitted token is then an exact sample of p given its prefix, and the same token `ar`
draws at that position with the same seed and key (kernels/randoms.py says why). The chance that a
node's children hold the winner is their total probability, what recursive rejection sampling
(SpecInfer) accepts for deterministic drafts.

Complexity per sequence: O(K N) after the O(N V) argmax or race.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.randoms import check_race, race_node_ref, race_tokens_triton
from samgpu.kernels.types import NO_PARENT, VerifyOutput


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
    torch.argmax(logits, dim=-1, out=out.argmax)
    target = out.argmax.tolist()
    _walk_ref(lambda b, i: target[b][i], tokens, parents, num_nodes, out)
    return out


def _walk_ref(target, tokens, parents, num_nodes, out: VerifyOutput) -> None:
    """From the root, move to the first child whose token is target(b, node), to depth K - 1;
    accepted path, count and bonus (the last node's target) into `out`."""
    num_reqs, k_slots = out.accepted_nodes.shape
    toks, pars = tokens.tolist(), parents.tolist()
    accepted = torch.full((num_reqs, k_slots), NO_PARENT, dtype=torch.int32)
    num_acc = torch.zeros(num_reqs, dtype=torch.int32)
    bonus = torch.zeros(num_reqs, dtype=torch.int32)
    for b in range(num_reqs):
        path = [0]
        while len(path) < k_slots:
            want = target(b, path[-1])
            children = [
                i
                for i in range(1, int(num_nodes[b]))
                if pars[b][i] == path[-1] and toks[b][i] == want
            ]
            if not children:
                break
            path.append(children[0])
        accepted[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        num_acc[b] = len(path) - 1
        bonus[b] = target(b, path[-1])
    out.accepted_nodes.copy_(accepted)
    out.num_accepted.copy_(num_acc)
    out.bonus.copy_(bonus)


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


def verify_sample_triton(
    probs: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    seed: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    out = _check_tree("probs", probs, tokens, parents, num_nodes, out, max_depth)
    num_reqs, max_nodes, _ = probs.shape
    race_tokens_triton(probs, seed, keys, positions, out.argmax)
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


def verify_sample_ref(
    probs: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    seed: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    """Reference: the greedy walk over race winners, raced only for the nodes it visits (at most
    K a sequence: the vocabulary-wide hash of every node would dominate a CPU step)."""
    out = _check_tree("probs", probs, tokens, parents, num_nodes, out, max_depth)
    check_race(probs, seed, keys, positions, out.argmax)
    s, ks, pos = int(seed[0]), keys.tolist(), positions.tolist()
    winners: dict[tuple[int, int], int] = {}

    def winner(b: int, i: int) -> int:
        if (b, i) not in winners:
            winners[b, i] = race_node_ref(probs[b, i], s, ks[b], pos[b][i])
        return winners[b, i]

    _walk_ref(winner, tokens, parents, num_nodes, out)
    out.argmax.fill_(-1)  # (nodes off the walk are not raced)
    for (b, i), token in winners.items():
        out.argmax[b, i] = token
    return out


def verify_sample(
    probs: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    seed: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor,
    *,
    max_depth: int | None = None,
    out: VerifyOutput | None = None,
) -> VerifyOutput:
    impl = verify_sample_triton if use_triton(probs) else verify_sample_ref
    return impl(
        probs, tokens, parents, num_nodes, seed, keys, positions, max_depth=max_depth, out=out
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
_SHAPES = [(1, 1), (7, 4), (64, 17), (80, 9), (128, 65)]  # (N, K)
AOT_SPECS = [
    AotSpec(
        _verify_greedy_kernel,
        _GREEDY_SIG,
        {"MAX_NODES": n, "BLOCK_N": triton.next_power_of_2(n), "K": k},
    )
    for n, k in _SHAPES
]
