"""`merged` (ours): the SAM chain and the Token Recycling branches verified together, in one tree.

Every step, per sequence, within a fixed budget of `max_nodes` nodes (root included):
1. the SAM chain: source by the threshold rule with a lower bar than `sam+tr` (l_threshold 3 by
   default, static length reduced by l_bias 5): when a match is long enough, up to `chain_nodes`
   nodes from the dynamic or static automaton; otherwise no chain;
2. the Token Recycling template tree (best-first prefix, kernels/token_recycling.py), filled from
   the root;
3. `merge_tree` (kernels/merge_tree.py) inserts the TR nodes into the chain trie-style: a TR node
   whose token equals a sibling's maps onto it (its subtree continues there, e.g. TR alternatives
   under the chain's first token), others are appended while the budget lasts. No two siblings share
   a token, the order stays topological, and every root path of the chain and of the surviving TR
   tree is a path of the result, so one verification gets the better of both drafts.
The TR table is refreshed from every verified node, as in `tr`.

Example: chain [r, x, y], TR [r, x, z] (z under the root) -> [r, x, y, z], parents [-1, 0, 1, 0].
With `-O store=...` (parts/store.py) the cross-request store is a third chain source (same rule,
its length less store_bias, a candidate when its match has a continuation) and `finish` appends
each finished response to it.
`last_source`: SOURCE_STATIC / SOURCE_DYNAMIC / SOURCE_STORE when a chain was drafted, else
SOURCE_FALLBACK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.drafters.parts import int32
from samgpu.drafters.parts.automata import SamAutomata
from samgpu.drafters.parts.recycling import TR_TEMPLATE_NODES, TokenRecycling
from samgpu.drafters.parts.store import StoreOptions
from samgpu.drafters.protocol import DrafterBase, NewRequests
from samgpu.drafters.registry import DrafterContext, Method, register, tree_budget
from samgpu.kernels.merge_tree import merge_trees
from samgpu.kernels.sam_draft import SamSelectConfig
from samgpu.types import SOURCE_NONE, DecodeState, DraftTree, StepOutput


def merged_chain_cap(chain_nodes: int | None, max_nodes: int) -> int:
    """The chain cap (root included) of the merged methods: `chain_nodes`, which must lie in
    [1, max_nodes], or by default half the budget, from 2 to 40 nodes."""
    if chain_nodes is None:
        return min(40, max(2, max_nodes // 2), max_nodes)
    if not 1 <= chain_nodes <= max_nodes:
        raise ValueError(f"chain_nodes={chain_nodes} must be in [1, {max_nodes}]")
    return chain_nodes


@dataclass(frozen=True, kw_only=True)
class MergedOptions(StoreOptions):
    max_nodes: int = TR_TEMPLATE_NODES  # total budget, root included
    chain_nodes: int | None = None  # chain cap (root included); None: min(40, max(2, max_nodes//2))
    l_bias: int = 5
    l_threshold: int = 3
    prompt_bigrams: bool = True  # seed the TR table from the prompts' bigrams at prefill
    use_static: bool = True
    use_dynamic: bool = True
    climb_dynamic: bool = True
    stop_at_eos: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes={self.max_nodes} must be >= 1")
        merged_chain_cap(self.chain_nodes, self.max_nodes)

    @property
    def chain_cap(self) -> int:
        return merged_chain_cap(self.chain_nodes, self.max_nodes)


class MergedDrafter(DrafterBase):
    name = "merged"

    def __init__(self, ctx: DrafterContext, options: MergedOptions):
        self.options = options
        self.automata = SamAutomata.for_method(ctx, options)
        chain = options.chain_cap
        self.config = SamSelectConfig(
            mode="threshold",
            l_bias=options.l_bias,
            l_threshold=options.l_threshold,
            n_predicts=chain,
            climb_dynamic=options.climb_dynamic,
            stop_at_eos=options.stop_at_eos,
            store_bias=options.store_bias,
        )
        self.recycling = TokenRecycling(
            ctx.vocab_size, options.max_nodes, ctx.device, options.prompt_bigrams
        )
        self.max_nodes = options.max_nodes
        self.max_depth = min(options.max_nodes - 1, max(chain - 1, self.recycling.max_depth))
        self._chain = DraftTree.empty(ctx.max_reqs, chain, ctx.device)
        self._tr = DraftTree.empty(ctx.max_reqs, self.recycling.num_nodes, ctx.device)
        self._source = int32((ctx.max_reqs,), SOURCE_NONE, ctx.device)
        self._chain_len = int32((ctx.max_reqs,), 0, ctx.device)
        self.last_source = self._source

    def prepare(self, state: DecodeState, new: NewRequests) -> None:
        self.automata.prepare(state, new)

    def start(self, state: DecodeState, new: NewRequests) -> None:
        self.automata.start(state, new)
        self.recycling.start(state, new)

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        B = state.num_reqs
        chain, tr = self._chain.rows(B), self._tr.rows(B)
        source, chain_len = self._source[:B], self._chain_len[:B]
        self.automata.draft_chain(state.root, chain, self.config, source, chain_len)
        self.recycling.fill(state.root, tr)
        merge_trees(chain, tr, tree)

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self.automata.update(step)
        self.recycling.update(step)

    def finish(self, state: DecodeState, rows: torch.Tensor) -> None:
        self.automata.finish(state, rows)


register(
    Method(
        name="merged",
        summary="SAM chain and Token Recycling branches in one tree, de-duplicated, in a budget",
        options=MergedOptions,
        build=MergedDrafter,
        needs_index=True,
        budget=tree_budget,
    )
)
