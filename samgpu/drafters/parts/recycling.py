"""Token Recycling's parts (Luo et al. 2024, "Turning Trash into Treasure"): the adjacency table
and the template tree, composed by the `tr`, `sam+tr`, `sam-tree` and `merged` methods.

Table: `adj [V, 8]`, row v = the top-8 successors the target model predicted the last time token v
was a verified tree node. After every step, each tree node i of each live sequence refreshes
`adj[tokens[b, i]] = top-8(logits[b, i])` (all verified positions, accepted or not: the rejected
candidates' logits are the recycled "trash"). The table is shared by the batch and kept across
`generate` calls (the paper's hot start). Initial value: zeros, i.e. every successor of an unseen
token is token 0. Any valid id is lossless (verification rejects wrong drafts). The official code
also recycles the prompt's prefill logits; the runner's prefill does not expose them, so instead
each prompt's own bigrams seed rank 0 (`seed_from_text`): adj[p[i]] = [p[i+1], previous
row[0:7]] (later occurrences win). Example: prompt "a b a c" -> adj[a] = [c, ...],
adj[b] = [a, ...].

Template: the published static tree (80 nodes + root, 6 levels, Token Recycling's "general"
template as shipped in Spec-Bench's recycling baseline; the same tree as SAM-Decoding's
`default_tree_80.json`), given as child-rank paths: [0, 1] = the 2nd successor of the root's 1st
successor. Filled per sequence by walking `adj` from the root token (kernels/token_recycling.py).
With a budget below 81 nodes the tree is the first `max_nodes` template nodes in best-first order
(score = product of RANK_PRIOR over the path, a rough per-rank acceptance guess; ties by breadth
first order). Scores fall strictly along a path, so every prefix is a subtree, in topological order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from samgpu.drafters.protocol import NewRequests
from samgpu.kernels.token_recycling import (
    NO_CLAIM,
    NO_RANK,
    token_recycling_fill,
    token_recycling_update,
)
from samgpu.kernels.vocab_topk import vocab_top_ids
from samgpu.types import NO_PARENT, DecodeState, DraftTree, StepOutput

TOPK: int = 8  # successors per token in the adjacency table

# Token Recycling's static tree, as child-rank paths from the root (80 nodes; root implicit).
TR_TEMPLATE_PATHS: tuple[tuple[int, ...], ...] = (
    *((r,) for r in range(8)),
    *((0, r) for r in range(8)),
    (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1),
    (4, 0), (5, 0), (6, 0), (7, 0),
    *((0, 0, r) for r in range(8)),
    (0, 1, 0), (0, 1, 1), (0, 1, 2), (0, 2, 0), (0, 2, 1), (0, 3, 0), (0, 4, 0), (0, 5, 0),
    (0, 6, 0), (0, 7, 0), (1, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0),
    (5, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 3), (0, 0, 0, 4), (0, 0, 1, 0),
    (0, 0, 1, 1), (0, 0, 2, 0), (0, 0, 3, 0), (0, 0, 4, 0), (0, 1, 0, 0), (0, 2, 0, 0),
    (1, 0, 0, 0), (2, 0, 0, 0), (3, 0, 0, 0),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 2), (0, 0, 0, 1, 0), (0, 0, 0, 2, 0),
    (0, 0, 1, 0, 0), (0, 1, 0, 0, 0), (1, 0, 0, 0, 0),
    (0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1), (0, 0, 0, 1, 0, 0),
)  # fmt: skip
TR_TEMPLATE_NODES: int = len(TR_TEMPLATE_PATHS) + 1  # 81 with the root
RANK_PRIOR: tuple[float, ...] = (0.5, 0.15, 0.08, 0.05, 0.04, 0.03, 0.025, 0.02)


@dataclass(frozen=True)
class TemplateTree:
    """A rank-path template in topological (best-first) order; node 0 is the root."""

    paths: tuple[tuple[int, ...], ...]  # paths[0] = () (root)
    parents: tuple[int, ...]  # parents[0] = NO_PARENT

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def max_depth(self) -> int:
        return max(len(p) for p in self.paths)

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(paths [T, D] int32 NO_RANK-padded, depth [T] int32, parents [T] int32) on device."""
        D = max(1, self.max_depth)
        rows = [list(p) + [NO_RANK] * (D - len(p)) for p in self.paths]
        paths = torch.tensor(rows, dtype=torch.int32, device=device)
        depth = torch.tensor([len(p) for p in self.paths], dtype=torch.int32, device=device)
        parents = torch.tensor(self.parents, dtype=torch.int32, device=device)
        return paths, depth, parents


def template_tree(max_nodes: int = TR_TEMPLATE_NODES) -> TemplateTree:
    """The first `max_nodes` (root included) nodes of the TR template in best-first order."""
    if max_nodes < 1:
        raise ValueError(f"max_nodes={max_nodes} must be >= 1")

    def score(path):
        s = 1.0
        for r in path:
            s *= RANK_PRIOR[r]
        return s

    order = sorted(range(len(TR_TEMPLATE_PATHS)), key=lambda i: (-score(TR_TEMPLATE_PATHS[i]), i))
    paths = [()] + [TR_TEMPLATE_PATHS[i] for i in order][: max_nodes - 1]
    where = {p: i for i, p in enumerate(paths)}
    parents = [NO_PARENT] + [where[p[:-1]] for p in paths[1:]]
    assert all(p < i for i, p in enumerate(parents) if i), "best-first order is topological"
    return TemplateTree(tuple(paths), tuple(parents))


class TokenRecyclingTable:
    """The adjacency table and its update from a verified step (shared by tr, sam+tr, merged)."""

    def __init__(self, vocab_size: int, device: torch.device | str):
        self.vocab_size = vocab_size
        self.adj = torch.zeros(vocab_size, TOPK, dtype=torch.int32, device=device)
        self._winner = torch.full((vocab_size,), NO_CLAIM, dtype=torch.int32, device=device)

    def fill(self, template: tuple, root: torch.Tensor, tree: DraftTree) -> None:
        """Fill `tree` [B, >= T] with a template (TemplateTree.tensors()) grown from `root` [B]."""
        paths, depth, parents = template
        token_recycling_fill(
            self.adj, root, paths, depth, parents, tree.tokens, tree.parents, tree.num_nodes
        )

    def seed_from_text(
        self, text: torch.Tensor, lengths: torch.Tensor, longest: int, chunk: int = 512
    ) -> None:
        """Set-up: the prompts' own bigrams become rank-0 successors (no host read).

        text [B, T] int32, lengths [B] int32 (0 for rows to skip), longest >= max(lengths). For
        every position i < lengths[b] - 1: adj[text[b, i]] = [text[b, i+1], old row[0:7]] (the old
        row shifts down a rank, so what the model taught earlier is kept); later positions and
        later sequences win, as in `update`. A stand-in for the paper's seeding from the prefill
        logits, which the runner does not expose; the first verified step replaces these rows."""
        # Chunks of `chunk` columns whatever the prompts' lengths, the buffer's last one padded
        # (num_valid masks the rest): a width that followed the longest prompt, or the buffer's
        # end, compiled another kernel variant mid-run (Triton specialises on sizes and strides;
        # 144 ms on an H200 for the first 1,000-token prompt; a prompt past the last full chunk
        # compiled two kernels in a B=64 run on 2026-12-02).
        last = text.shape[1] - 1
        for start in range(0, max(longest - 1, 0), chunk):
            stop = min(start + chunk, last)
            pad = (0, chunk - (stop - start))
            toks = F.pad(text[:, start:stop].clamp(min=0), pad).contiguous()
            succ = F.pad(text[:, start + 1 : stop + 1].clamp(min=0), pad)
            rows = torch.cat([succ.unsqueeze(-1), self.adj[toks.long()][..., : TOPK - 1]], -1)
            num_valid = (lengths - 1 - start).clamp(0, stop - start).to(torch.int32)
            token_recycling_update(
                self.adj, toks, rows.to(torch.int32).contiguous(), num_valid, self._winner
            )

    def update(self, step: StepOutput) -> None:
        """Recycle the logits of every node of every sequence that emitted tokens this step."""
        tree = step.tree
        N = tree.max_nodes
        B, V = step.logits.shape[0], step.logits.shape[-1]
        # a view when the step's logits are [B, N, V] (the engine sizes them at the drafter's N)
        logits = step.logits[:, :N].reshape(B * N, V)
        topk = vocab_top_ids(logits, TOPK).view(B, N, TOPK).to(torch.int32)
        num_valid = torch.where(step.num_new > 0, tree.num_nodes, 0).to(torch.int32)
        token_recycling_update(self.adj, tree.tokens, topk, num_valid, self._winner)


class TokenRecycling:
    """Token Recycling as a drafting part: the table, a template of `max_nodes` nodes (best-first
    prefix of the published 81-node tree) and, with `prompt_bigrams`, seeding at start."""

    def __init__(
        self, vocab_size: int, max_nodes: int, device: torch.device | str, prompt_bigrams: bool
    ):
        self.template = template_tree(min(max_nodes, TR_TEMPLATE_NODES))
        self._tensors = self.template.tensors(device)
        self.table = TokenRecyclingTable(vocab_size, device)
        self.prompt_bigrams = prompt_bigrams

    @property
    def num_nodes(self) -> int:
        return self.template.num_nodes

    @property
    def max_depth(self) -> int:
        return self.template.max_depth

    def start(self, state: DecodeState, new: NewRequests) -> None:
        if self.prompt_bigrams:
            self.table.seed_from_text(state.text, new.lengths, new.longest)

    def fill(self, root: torch.Tensor, tree: DraftTree) -> None:
        """The template grown from `root` [B] into `tree` [B, >= num_nodes]."""
        self.table.fill(self._tensors, root, tree)

    def update(self, step: StepOutput) -> None:
        self.table.update(step)
