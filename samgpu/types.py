"""Vocabulary of the decode loop, defined once (after vLLM's rejection sampler), and the tensor
bundles that cross module boundaries.

- committed text: prompt + every token emitted so far. Its last token is the *root* of the next
  tree; the root is not yet in the KV cache (the cache holds committed text minus the root).
- draft: tokens proposed by a drafter, as a tree of `num_nodes` nodes per sequence; node 0 is the
  root, parents in topological order (parent index < child index). A chain is a tree.
- accepted: draft nodes on the deepest root-to-node path that verification keeps.
- bonus: the token the target model produces after the last accepted node (greedy: its argmax;
  sampling: drawn from what rejection leaves). Every step emits `num_accepted + 1` tokens:
  the accepted draft tokens, then the bonus. The bonus becomes the next root.
- recovered: (sampling) a bonus drawn after a rejection, from the renormalised residual.
- MAT: mean accepted tokens per step, bonus included (= mean of num_accepted + 1).

Example: committed text "A B C", root C. Draft tree tokens [C, D, E, X], parents [-1, 0, 1, 0].
The model's argmax after C is D, after D is E, after E is F: accepted nodes [0, 1, 2] (D, E),
num_accepted = 2, bonus F; emitted "D E F"; next root F; KV of C, D, E compacted into the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NO_PARENT: int = -1
NO_STATE: int = -1
PAD_TOKEN: int = -1

# Draft source per sequence and step (select kernel output, statistics).
SOURCE_NONE: int = 0  # no draft (root only)
SOURCE_STATIC: int = 1  # static automaton chain
SOURCE_DYNAMIC: int = 2  # dynamic automaton chain
SOURCE_FALLBACK: int = 3  # auxiliary drafter (Token Recycling tree)


@dataclass
class DraftTree:
    """A fixed-shape draft tree per sequence, filled in place by a drafter each step."""

    tokens: torch.Tensor  # [B, N] int32; tokens[:, 0] = root (last committed token)
    parents: torch.Tensor  # [B, N] int32; parents[:, 0] = NO_PARENT; parents[b, i] < i
    num_nodes: torch.Tensor  # [B] int32, 1 <= num_nodes <= N; nodes past it are padding

    @property
    def max_nodes(self) -> int:
        return self.tokens.shape[1]

    @staticmethod
    def empty(num_reqs: int, max_nodes: int, device: torch.device | str) -> DraftTree:
        tokens = torch.zeros(num_reqs, max_nodes, dtype=torch.int32, device=device)
        parents = torch.full((num_reqs, max_nodes), NO_PARENT, dtype=torch.int32, device=device)
        num_nodes = torch.ones(num_reqs, dtype=torch.int32, device=device)
        return DraftTree(tokens, parents, num_nodes)

    @staticmethod
    def make_dummy(
        tokens: list[list[int]], parents: list[list[int]], device: torch.device | str = "cpu"
    ) -> DraftTree:
        """Test constructor: ragged python lists, padded to the longest with PAD_TOKEN/NO_PARENT."""
        width = max(len(t) for t in tokens)
        tree = DraftTree.empty(len(tokens), width, device)
        tree.tokens.fill_(0)
        for b, (toks, pars) in enumerate(zip(tokens, parents, strict=True)):
            tree.tokens[b, : len(toks)] = torch.tensor(toks, dtype=torch.int32)
            tree.parents[b, : len(pars)] = torch.tensor(pars, dtype=torch.int32)
            tree.num_nodes[b] = len(toks)
        return tree


@dataclass
class StepOutput:
    """What verification and commit produced this step; drafters read it in `update`."""

    tree: DraftTree  # the tree just verified
    logits: torch.Tensor  # [B, N, V] float; logits[b, i] = target distribution after node i
    accepted_nodes: torch.Tensor  # [B, K] int32; root + accepted path nodes, NO_PARENT-padded
    num_accepted: torch.Tensor  # [B] int32; accepted draft nodes (root excluded)
    bonus: torch.Tensor  # [B] int32; the bonus token (next root)
    # [B, K] int32; emitted tokens (accepted drafts, then bonus), PAD_TOKEN-padded
    new_tokens: torch.Tensor
    # [B] int32; emitted tokens kept (0 for finished; cut at EOS / max_new_tokens)
    num_new: torch.Tensor


@dataclass
class DecodeState:
    """Per-batch decode state, preallocated at capacity, updated in place (CUDA-graph friendly)."""

    root: torch.Tensor  # [B] int32; last committed token (not in the KV cache)
    cache_len: torch.Tensor  # [B] int32; committed tokens in the KV cache (= text length - 1)
    text: torch.Tensor  # [B, max_len] int32; committed text (prompt + emitted), PAD_TOKEN beyond
    text_len: torch.Tensor  # [B] int32; committed text length (= cache_len + 1)
    prompt_len: torch.Tensor  # [B] int32
    num_generated: torch.Tensor  # [B] int32; emitted tokens so far
    max_new_tokens: torch.Tensor  # [B] int32
    finished: torch.Tensor  # [B] bool
    step: StepOutput | None = None  # last step's result (None before the first step)

    @property
    def num_reqs(self) -> int:
        return self.root.shape[0]
