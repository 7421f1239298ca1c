"""The shared vocabulary of samgpu, at the ground floor: named sentinels and the tensor bundles that
cross module boundaries (kernels, drafters, engine). Kernels import only this module of samgpu;
`samgpu.types` re-exports it for everything above.

Words (after vLLM's rejection sampler), defined once:
- committed text: prompt + every token emitted so far. Its last token is the *root* of the next
  tree; the root is not yet in the KV cache (the cache holds committed text minus the root).
- draft: tokens proposed by a drafter, as a tree of `num_nodes` nodes per sequence; node 0 is the
  root, parents in topological order (parent index < child index). A chain is a tree.
- accepted: draft nodes on the deepest root-to-node path that verification keeps.
- bonus: the token the target model produces after the last accepted node (greedy: its argmax;
  sampling: the token its distribution drew, kernels/randoms.py). Every step emits
  `num_accepted + 1` tokens: the accepted draft tokens, then the bonus. The bonus becomes the
  next root.
- MAT: mean accepted tokens per step, bonus included (= mean of num_accepted + 1).

Example: committed text "A B C", root C. Draft tree tokens [C, D, E, X], parents [-1, 0, 1, 0].
The model's argmax after C is D, after D is E, after E is F: accepted nodes [0, 1, 2] (D, E),
num_accepted = 2, bonus F; emitted "D E F"; next root F; KV of C, D, E compacted into the cache.

Shapes: B sequences (rows of a batch, leading rows of buffers allocated at capacity), N tree nodes
per sequence, K = max_depth + 1 accepted-path slots, V vocabulary, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Sentinels: one value, several names, each saying what is missing.
NO_PARENT: int = -1  # parent of the root and of pad nodes; pad of accepted-node lists
NO_STATE: int = -1  # no automaton state (no match, unset link)
NO_EDGE: int = -1  # end of an edge list; free hash slot
NO_POSITION: int = -1  # endpos of an automaton's root
PAD_TOKEN: int = -1  # token slots past a sequence's text, past emitted tokens, unused EOS slots
ROOT_STATE: int = 0  # every automaton's root state

# Draft source per sequence and step (drafters' `last_source`, statistics).
SOURCE_NONE: int = 0  # no draft (root only)
SOURCE_STATIC: int = 1  # static automaton chain
SOURCE_DYNAMIC: int = 2  # dynamic automaton chain
SOURCE_FALLBACK: int = 3  # auxiliary drafter (e.g. the Token Recycling tree)
SOURCE_STORE: int = 4  # cross-request store chain (earlier responses of the run)
SOURCE_NAMES: dict[int, str] = {
    SOURCE_NONE: "none",
    SOURCE_STATIC: "static",
    SOURCE_DYNAMIC: "dynamic",
    SOURCE_FALLBACK: "fallback",
    SOURCE_STORE: "store",
}


def _i32(shape, fill: int, device) -> torch.Tensor:
    return torch.full(shape, fill, dtype=torch.int32, device=device)


@dataclass
class DraftTree:
    """A fixed-shape draft tree per sequence, filled in place by a drafter each step."""

    tokens: torch.Tensor  # [B, N] int32; tokens[:, 0] = root (last committed token)
    parents: torch.Tensor  # [B, N] int32; parents[:, 0] = NO_PARENT; parents[b, i] < i
    num_nodes: torch.Tensor  # [B] int32, 1 <= num_nodes <= N; nodes past it are padding

    @property
    def max_nodes(self) -> int:
        return self.tokens.shape[1]

    def rows(self, num_reqs: int) -> DraftTree:
        """The leading `num_reqs` rows (views of a buffer allocated at capacity)."""
        return DraftTree(self.tokens[:num_reqs], self.parents[:num_reqs], self.num_nodes[:num_reqs])

    def replace_rows(self, use_other: torch.Tensor, other: DraftTree) -> None:
        """Rows b with use_other[b] ([B] bool) become `other`'s (same B and N), in place, with no
        branch on the device's values (a chain drafter's fallback tree, chosen per sequence)."""
        self.tokens.copy_(torch.where(use_other[:, None], other.tokens, self.tokens))
        self.parents.copy_(torch.where(use_other[:, None], other.parents, self.parents))
        self.num_nodes.copy_(torch.where(use_other, other.num_nodes, self.num_nodes))

    @staticmethod
    def empty(num_reqs: int, max_nodes: int, device: torch.device | str) -> DraftTree:
        return DraftTree(
            tokens=_i32((num_reqs, max_nodes), 0, device),
            parents=_i32((num_reqs, max_nodes), NO_PARENT, device),
            num_nodes=_i32((num_reqs,), 1, device),
        )

    @staticmethod
    def make_dummy(
        tokens: list[list[int]], parents: list[list[int]], device: torch.device | str = "cpu"
    ) -> DraftTree:
        """Test constructor: ragged python lists, padded to the longest with 0 / NO_PARENT."""
        width = max(len(t) for t in tokens)
        tree = DraftTree.empty(len(tokens), width, device)
        for b, (toks, pars) in enumerate(zip(tokens, parents, strict=True)):
            tree.tokens[b, : len(toks)] = torch.tensor(toks, dtype=torch.int32)
            tree.parents[b, : len(pars)] = torch.tensor(pars, dtype=torch.int32)
            tree.num_nodes[b] = len(toks)
        return tree


@dataclass
class TreeMask:
    """What `tree_mask` derives from a DraftTree's parents (never stored twice)."""

    mask: torch.Tensor  # [B, N, N] bool; mask[b, i, j]: j is an ancestor of i or i itself
    depth: torch.Tensor  # [B, N] int32
    positions: torch.Tensor | None  # [B, N] int32; cache_len[:, None] + depth, or None

    def rows(self, num_reqs: int) -> TreeMask:
        pos = None if self.positions is None else self.positions[:num_reqs]
        return TreeMask(self.mask[:num_reqs], self.depth[:num_reqs], pos)

    @staticmethod
    def empty(num_reqs: int, max_nodes: int, device: torch.device | str) -> TreeMask:
        return TreeMask(
            mask=torch.zeros(num_reqs, max_nodes, max_nodes, dtype=torch.bool, device=device),
            depth=_i32((num_reqs, max_nodes), 0, device),
            positions=_i32((num_reqs, max_nodes), 0, device),
        )


@dataclass
class VerifyOutput:
    """What verification decides per sequence (greedy or sampling)."""

    accepted_nodes: torch.Tensor  # [B, K] int32; root + accepted path, NO_PARENT-padded
    num_accepted: torch.Tensor  # [B] int32; accepted draft nodes (root excluded)
    bonus: torch.Tensor  # [B] int32
    argmax: torch.Tensor  # [B, N] int64: each node's target argmax or sampled token

    def rows(self, num_reqs: int) -> VerifyOutput:
        return VerifyOutput(
            self.accepted_nodes[:num_reqs],
            self.num_accepted[:num_reqs],
            self.bonus[:num_reqs],
            self.argmax[:num_reqs],
        )

    @staticmethod
    def empty(num_reqs: int, max_nodes: int, max_depth: int, device) -> VerifyOutput:
        return VerifyOutput(
            accepted_nodes=_i32((num_reqs, max_depth + 1), NO_PARENT, device),
            num_accepted=_i32((num_reqs,), 0, device),
            bonus=_i32((num_reqs,), 0, device),
            argmax=torch.zeros(num_reqs, max_nodes, dtype=torch.int64, device=device),
        )


@dataclass
class StepOutput:
    """What one step produced; drafters read it in `update`, commit writes its last two fields."""

    tree: DraftTree  # the tree just verified
    logits: torch.Tensor  # [B, N, V] model dtype; logits[b, i] = target distribution after node i
    verify: VerifyOutput  # accepted path and bonus
    start_len: torch.Tensor  # [B] int32; cache_len when the step began (base of node slots)
    new_tokens: torch.Tensor  # [B, K] int32; emitted tokens (accepted, then bonus), PAD-padded
    num_new: torch.Tensor  # [B] int32; emitted tokens kept (0 if finished; cut at EOS / budget)
    hidden: torch.Tensor | None = None  # [B, N, H]; target's last hidden states (if asked for)

    @property
    def accepted_nodes(self) -> torch.Tensor:
        return self.verify.accepted_nodes

    @property
    def num_accepted(self) -> torch.Tensor:
        return self.verify.num_accepted

    @property
    def bonus(self) -> torch.Tensor:
        return self.verify.bonus


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
    step: StepOutput | None = None  # the step buffers (filled by each step)

    @property
    def num_reqs(self) -> int:
        return self.root.shape[0]

    def rows(self, num_reqs: int) -> DecodeState:
        """The leading `num_reqs` rows (views; `step` is not carried over)."""
        names = [f.name for f in fields(self) if f.name != "step"]
        return DecodeState(**{name: getattr(self, name)[:num_reqs] for name in names})
