"""`sam-tree`: tree drafts from the automata (beyond the paper's chain drafts).

Per sequence and step, within `max_nodes` nodes (root included):
1. dynamic chain: the sequence's own automaton drafts a chain as in `sam` (longest rule restricted
   to the dynamic automaton: min(chain_nodes, 1 + floor(alpha x dyn_len)) nodes; none without a
   match). The dynamic automaton keeps no occurrence counts (they change with every extension), so
   it contributes its chain only. With the cross-request store on (`-O store=...`,
   parts/store.py), the chain comes from whichever of the dynamic automaton and the store has the
   longer match (the store's less store_bias; ties: dynamic; the store only when its match has a
   continuation), and `finish` appends each finished response to the store;
2. static count tree: from the static match (match_len >= min_match), the best-first top nodes of
   the corpus trie below the match, ranked by occurrence count (kernels/sam_tree.py);
3. both are merged trie-style (kernels/merge_tree.py): chain first, then the static tree's nodes in
   rank order while the budget lasts, no duplicate siblings.
With `with_tr=True` the Token Recycling template tree is merged in last ("SAM-tree + TR"), using
what budget remains, and the TR table is refreshed every step.

`last_source`: SOURCE_DYNAMIC (SOURCE_STORE) when the chain from the dynamic automaton (the store)
is non-empty, else SOURCE_STATIC when the static tree has nodes, else SOURCE_FALLBACK with TR,
SOURCE_NONE without.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.drafters.parts import int32
from samgpu.drafters.parts.automata import SamAutomata
from samgpu.drafters.parts.recycling import TokenRecycling
from samgpu.drafters.parts.store import StoreOptions
from samgpu.drafters.protocol import DrafterBase, NewRequests
from samgpu.drafters.registry import DrafterContext, Method, register, tree_budget
from samgpu.kernels.merge_tree import merge_trees
from samgpu.kernels.sam_draft import SamSelectConfig, sam_draft_chain
from samgpu.kernels.sam_tree import sam_tree
from samgpu.types import (
    SOURCE_FALLBACK,
    SOURCE_NONE,
    SOURCE_STATIC,
    DecodeState,
    DraftTree,
    StepOutput,
)


@dataclass(frozen=True, kw_only=True)
class SamTreeOptions(StoreOptions):
    max_nodes: int = 64  # total budget, root included
    chain_nodes: int | None = None  # dynamic chain cap (root incl.); None: min(40, max_nodes // 2)
    alpha: float = 4.0  # dynamic chain nodes = min(chain_nodes, 1 + floor(alpha * dyn_len))
    min_match: int = 2  # static tree only from matches at least this long
    max_scan: int = 4096  # edges ranked per state at most (bounds very short matches)
    with_tr: bool = False  # merge the Token Recycling tree into the remaining budget
    prompt_bigrams: bool = True  # with_tr: seed the TR table from the prompts' bigrams
    use_static: bool = True
    use_dynamic: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes={self.max_nodes} must be >= 1")
        if self.chain_nodes is not None and not 1 <= self.chain_nodes <= self.max_nodes:
            raise ValueError(f"chain_nodes={self.chain_nodes} must be in [1, {self.max_nodes}]")
        if self.min_match < 1 or self.max_scan < 1:
            raise ValueError(f"min_match={self.min_match}, max_scan={self.max_scan} must be >= 1")

    @property
    def chain_cap(self) -> int:
        if self.chain_nodes is not None:
            return self.chain_nodes
        return min(40, max(1, self.max_nodes // 2))


class SamTreeDrafter(DrafterBase):
    name = "sam-tree"

    def __init__(self, ctx: DrafterContext, options: SamTreeOptions):
        self.options = o = options
        self.automata = SamAutomata.for_method(ctx, o, with_count=True)
        N, R, dev = o.max_nodes, ctx.max_reqs, ctx.device
        self.max_nodes = N
        self.max_depth = N - 1
        self.config = SamSelectConfig(
            mode="longest",
            l_bias=0,
            max_predicts=o.chain_cap,
            alpha=o.alpha,
            climb_dynamic=False,
            store_bias=o.store_bias,
        )
        self._chain = DraftTree.empty(R, o.chain_cap, dev)
        self._static = DraftTree.empty(R, N, dev)
        self._merged = DraftTree.empty(R, N, dev) if o.with_tr else None
        self.recycling = None
        if o.with_tr:
            self.recycling = TokenRecycling(ctx.vocab_size, N, dev, o.prompt_bigrams)
            self._tr = DraftTree.empty(R, self.recycling.num_nodes, dev)
        self._chain_source = int32((R,), SOURCE_NONE, dev)
        self._chain_len = int32((R,), 0, dev)
        self._source = int32((R,), SOURCE_NONE, dev)
        self.last_source = self._source

    def prepare(self, state: DecodeState, new: NewRequests) -> None:
        self.automata.prepare(state, new)

    def start(self, state: DecodeState, new: NewRequests) -> None:
        self.automata.start(state, new)
        if self.recycling is not None:
            self.recycling.start(state, new)

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        B = state.num_reqs
        o = self.options
        chain, static = self._chain.rows(B), self._static.rows(B)
        auto = self.automata
        if auto.dynamic is not None or auto.store is not None:
            sam_draft_chain(
                None,
                None,
                auto.dynamic,
                state.root,
                chain,
                self.config,
                source=self._chain_source[:B],
                chain_len=self._chain_len[:B],
                store=auto.store_automaton,
            )
        else:
            chain.num_nodes.fill_(1)
            chain.tokens[:, 0] = state.root
            self._chain_len[:B].zero_()
        if auto.static is not None:
            m = auto.static_matches(B)
            sam_tree(
                auto.static,
                m.state,
                m.match_len,
                state.root,
                static.tokens,
                static.parents,
                static.num_nodes,
                min_match=o.min_match,
                max_scan=o.max_scan,
            )
        else:
            static.num_nodes.fill_(1)
        out = self._merged.rows(B) if o.with_tr else tree
        merge_trees(chain, static, out)
        fallback = SOURCE_NONE
        if o.with_tr:
            tr = self._tr.rows(B)
            self.recycling.fill(state.root, tr)
            merge_trees(out, tr, tree)
            fallback = SOURCE_FALLBACK
        source = self._source[:B]
        has_chain = self._chain_len[:B] > 0
        has_static = static.num_nodes > 1
        fallback_or_static = torch.where(has_static, SOURCE_STATIC, fallback).to(torch.int32)
        source.copy_(torch.where(has_chain, self._chain_source[:B], fallback_or_static))

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self.automata.update(step)
        if self.recycling is not None:
            self.recycling.update(step)

    def finish(self, state: DecodeState, rows: torch.Tensor) -> None:
        self.automata.finish(state, rows)


register(
    Method(
        name="sam-tree",
        summary="tree from the automata: static children ranked by occurrence count, dynamic chain",
        options=SamTreeOptions,
        build=SamTreeDrafter,
        needs_index=True,
        budget=tree_budget,
    )
)
