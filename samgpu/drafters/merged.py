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
`last_source`: SOURCE_STATIC / SOURCE_DYNAMIC when a chain was drafted, else SOURCE_FALLBACK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.drafters._common import check_batch, check_options, int32, row_text, rows
from samgpu.drafters.sam import SamAutomata
from samgpu.drafters.tr import TR_TEMPLATE_NODES, TokenRecyclingTable, template_tree
from samgpu.kernels.merge_tree import merge_tree
from samgpu.kernels.sam_select import SamSelectConfig
from samgpu.types import SOURCE_NONE, DecodeState, DraftTree, StepOutput


@dataclass(frozen=True, kw_only=True)
class MergedOptions:
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
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes={self.max_nodes} must be >= 1")
        if self.chain_nodes is not None and not 1 <= self.chain_nodes <= self.max_nodes:
            raise ValueError(f"chain_nodes={self.chain_nodes} must be in [1, {self.max_nodes}]")

    @property
    def chain_cap(self) -> int:
        if self.chain_nodes is not None:
            return self.chain_nodes
        return min(40, max(2, self.max_nodes // 2), self.max_nodes)


class MergedDrafter:
    name = "merged"
    graph_safe = True

    def __init__(
        self,
        *,
        vocab_size: int,
        max_reqs: int,
        max_len: int,
        device: torch.device | str,
        index,
        options: MergedOptions,
    ):
        self.options = options
        self.max_reqs = max_reqs
        self.device = torch.device(device)
        self.automata = SamAutomata(
            vocab_size=vocab_size,
            max_reqs=max_reqs,
            max_len=max_len,
            device=self.device,
            index=index,
            use_static=options.use_static,
            use_dynamic=options.use_dynamic,
        )
        chain = options.chain_cap
        self.config = SamSelectConfig(
            mode="threshold",
            l_bias=options.l_bias,
            l_threshold=options.l_threshold,
            n_predicts=chain,
            climb_dynamic=options.climb_dynamic,
            stop_at_eos=options.stop_at_eos,
        )
        self.template = template_tree(min(options.max_nodes, TR_TEMPLATE_NODES))
        self._tpl = self.template.tensors(self.device)
        self.table = TokenRecyclingTable(vocab_size, self.device)
        self.max_nodes = options.max_nodes
        self.max_depth = min(options.max_nodes - 1, max(chain - 1, self.template.max_depth))
        self._chain = DraftTree.empty(max_reqs, chain, self.device)
        self._tr = DraftTree.empty(max_reqs, self.template.num_nodes, self.device)
        self._source = int32((max_reqs,), SOURCE_NONE, self.device)
        self._chain_len = int32((max_reqs,), 0, self.device)
        self.last_source = self._source

    def reset(self) -> None:
        self.table.reset()

    def prefill(self, state: DecodeState) -> None:
        check_batch(state, self.max_reqs, self.name)
        self.automata.prefill(state)
        if self.options.prompt_bigrams:
            self.table.seed_from_text(state.text, state.text_len)

    def prefill_rows(self, state: DecodeState, rows: torch.Tensor) -> None:
        self.automata.prefill_rows(state, rows)
        if self.options.prompt_bigrams:
            self.table.seed_from_text(*row_text(state, rows))

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        B = state.num_reqs
        chain, tr = rows(self._chain, B), rows(self._tr, B)
        source, chain_len = self._source[:B], self._chain_len[:B]
        self.automata.draft_chain(state.root, chain, self.config, source, chain_len)
        self.table.fill(self._tpl, state.root, tr)
        merge_tree(
            chain.tokens,
            chain.parents,
            chain.num_nodes,
            tr.tokens,
            tr.parents,
            tr.num_nodes,
            tree.tokens,
            tree.parents,
            tree.num_nodes,
        )
        self.last_source = source

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self.automata.update(step)
        self.table.update(step)


def build_merged(*, vocab_size, max_reqs, max_len, device, index, options: dict) -> MergedDrafter:
    check_options(MergedOptions, "merged", options)
    return MergedDrafter(
        vocab_size=vocab_size,
        max_reqs=max_reqs,
        max_len=max_len,
        device=device,
        index=index,
        options=MergedOptions(**options),
    )
