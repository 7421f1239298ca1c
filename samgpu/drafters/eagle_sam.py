"""`sam+eagle` and `merged+eagle`: SAM-Decoding's chains with the EAGLE-2 tree as the auxiliary
drafter (the paper's SAM-D[EAGLE2]), chosen or merged per sequence, every step.

- `sam+eagle`: the rule of `sam+tr` (sam.py; official samd: s = static_len - l_bias (5); if
  max(dyn_len, s) >= l_threshold (5), a chain of n_predicts = 40 nodes from the dynamic automaton
  when dyn_len >= s, else the static one), with the EAGLE tree instead of Token Recycling's when no
  match is long enough (SOURCE_FALLBACK). Both drafts are computed for every sequence and chosen
  with `torch.where` on the source: no Python branch, no sync.
- `merged+eagle`: as `merged` (merged.py), the SAM chain (lower bar: l_threshold 3) and the EAGLE
  tree in one tree by `merge_tree` (kernels/merge_tree.py): the chain first, then the EAGLE nodes in
  their rank order (best first) while the budget lasts, de-duplicated trie-style.
Both keep the head's cache in step with the text whatever was drafted (`update` catches up over
every step's emitted tokens), so the EAGLE tree is always ready. The EAGLE options (`topk`,
`depth`, `head`) are eagle.py's; the automata's and the store's are those of sam.py / merged.py.

Example (`sam+eagle`): static_len 12, dyn_len 6 -> s = 7 > 6: a 40-node chain from the static
corpus; static_len 8, dyn_len 3 -> max(3, 3) < 5: the EAGLE tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.drafters.eagle import EagleFields, build_eagle
from samgpu.drafters.merged import merged_chain_cap
from samgpu.drafters.parts import int32
from samgpu.drafters.parts.automata import SamAutomata
from samgpu.drafters.parts.store import StoreOptions
from samgpu.drafters.protocol import DrafterBase, NewRequests
from samgpu.drafters.registry import DrafterContext, Method, register, tree_budget
from samgpu.kernels.merge_tree import merge_trees
from samgpu.kernels.sam_draft import SamSelectConfig
from samgpu.types import SOURCE_FALLBACK, SOURCE_NONE, DecodeState, DraftTree, StepOutput


@dataclass(frozen=True, kw_only=True)
class _ChainEagleOptions(StoreOptions, EagleFields):
    """What both methods share: chain selection, EAGLE's options, the store's."""

    l_bias: int = 5
    l_threshold: int = 5
    max_nodes: int = 81  # tree budget, root included (caps the chain too)
    use_static: bool = True
    use_dynamic: bool = True
    climb_dynamic: bool = True
    stop_at_eos: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.check_eagle()
        if type(self.max_nodes) is not int or self.max_nodes < 1:
            raise ValueError(f"max_nodes must be an int >= 1, got {self.max_nodes!r}")

    @property
    def chain_cap(self) -> int:
        raise NotImplementedError

    def select_config(self) -> SamSelectConfig:
        return SamSelectConfig(
            mode="threshold",
            l_bias=self.l_bias,
            l_threshold=self.l_threshold,
            n_predicts=self.chain_cap,
            climb_dynamic=self.climb_dynamic,
            stop_at_eos=self.stop_at_eos,
            store_bias=self.store_bias,
        )


@dataclass(frozen=True, kw_only=True)
class SamEagleOptions(_ChainEagleOptions):
    """`sam+eagle`: the paper's selection defaults (official samd) + EAGLE's + the store's."""

    n_predicts: int = 40  # chain nodes, root included

    @property
    def chain_cap(self) -> int:
        return max(1, min(self.n_predicts, self.max_nodes))


@dataclass(frozen=True, kw_only=True)
class MergedEagleOptions(_ChainEagleOptions):
    """`merged+eagle`: `merged`'s chain settings (lower bar, chain cap) + EAGLE's + the store's."""

    l_threshold: int = 3
    chain_nodes: int | None = None  # chain cap (root included); None: min(40, max(2, max_nodes//2))

    def __post_init__(self):
        super().__post_init__()
        merged_chain_cap(self.chain_nodes, self.max_nodes)

    @property
    def chain_cap(self) -> int:
        return merged_chain_cap(self.chain_nodes, self.max_nodes)


class _SamEagle(DrafterBase):
    """The automata and the EAGLE runtime of a batch, kept in step with the text; subclasses
    combine the chain and the tree in `propose`."""

    needs_hidden = True

    def __init__(self, ctx: DrafterContext, options: _ChainEagleOptions):
        self.options = options
        self.config = options.select_config()
        self.automata = SamAutomata.for_method(ctx, options)
        self.chain_nodes = self.config.max_chain_nodes
        self.eagle = build_eagle(
            ctx, options, max_nodes=options.max_nodes, path_slots=self.chain_nodes
        )
        self._source = int32((ctx.max_reqs,), SOURCE_NONE, ctx.device)
        self._chain_len = int32((ctx.max_reqs,), 0, ctx.device)
        self.last_source = self._source

    def prepare(self, state: DecodeState, new: NewRequests) -> None:
        self.automata.prepare(state, new)

    def start(self, state: DecodeState, new: NewRequests) -> None:
        self.automata.start(state, new)
        self.eagle.start(state, new)

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self.automata.update(step)
        self.eagle.update(step)

    def finish(self, state: DecodeState, rows: torch.Tensor) -> None:
        self.automata.finish(state, rows)


class SamEagleDrafter(_SamEagle):
    name = "sam+eagle"

    def __init__(self, ctx: DrafterContext, options: SamEagleOptions):
        super().__init__(ctx, options)
        self.max_nodes = max(self.chain_nodes, self.eagle.max_nodes)
        self.max_depth = max(self.chain_nodes - 1, self.eagle.max_depth)
        self._eagle_tree = DraftTree.empty(ctx.max_reqs, self.max_nodes, ctx.device)

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        B = state.num_reqs
        source, chain_len = self._source[:B], self._chain_len[:B]
        self.automata.draft_chain(state.root, tree, self.config, source, chain_len)
        N, M = tree.max_nodes, self.eagle.max_nodes
        full = self._eagle_tree.rows(B)
        # the tree's columns past M stay padding (0 / NO_PARENT) from allocation
        self.eagle.propose(
            state.root, DraftTree(full.tokens[:, :M], full.parents[:, :M], full.num_nodes)
        )
        eagle = DraftTree(full.tokens[:, :N], full.parents[:, :N], full.num_nodes)
        tree.replace_rows(source == SOURCE_FALLBACK, eagle)


class MergedEagleDrafter(_SamEagle):
    name = "merged+eagle"

    def __init__(self, ctx: DrafterContext, options: MergedEagleOptions):
        super().__init__(ctx, options)
        self.max_nodes = options.max_nodes
        depth = max(self.chain_nodes - 1, self.eagle.max_depth)
        self.max_depth = min(options.max_nodes - 1, depth)
        self._chain = DraftTree.empty(ctx.max_reqs, self.chain_nodes, ctx.device)
        self._eagle_tree = DraftTree.empty(ctx.max_reqs, self.eagle.max_nodes, ctx.device)

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        B = state.num_reqs
        chain, eagle = self._chain.rows(B), self._eagle_tree.rows(B)
        source, chain_len = self._source[:B], self._chain_len[:B]
        self.automata.draft_chain(state.root, chain, self.config, source, chain_len)
        self.eagle.propose(state.root, eagle)
        merge_trees(chain, eagle, tree)


register(
    Method(
        name="sam+eagle",
        summary="SAM-Decoding with EAGLE-2: chain if a match is long enough, else the EAGLE tree",
        options=SamEagleOptions,
        build=SamEagleDrafter,
        needs_index=True,
        budget=tree_budget,
        head_layers=1,
    )
)
register(
    Method(
        name="merged+eagle",
        summary="SAM chain and the EAGLE-2 tree in one tree, de-duplicated, in a budget",
        options=MergedEagleOptions,
        build=MergedEagleDrafter,
        needs_index=True,
        budget=tree_budget,
        head_layers=1,
    )
)
