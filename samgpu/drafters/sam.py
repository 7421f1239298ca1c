"""`sam` and `sam+tr`: SAM-Decoding's chain drafts from a static and a dynamic suffix automaton.

Per sequence, the decoder keeps a match in each automaton (samgpu.automata): the static one (the
corpus index, shared) and the dynamic one (the sequence's own text, built on the GPU). Each step
`sam_draft_chain` (kernels/sam_draft.py) selects the source and writes the chain into the tree:
- `sam` (official `samd_sam_only`, the paper's "SAM-Decoding" row): no threshold; the automaton with
  the longer match (dynamic wins ties; static length reduced by l_bias = 0), chain nodes =
  min(60, 1 + floor(4 x match_len)); no match -> root only (SOURCE_NONE).
- `sam+tr` (official `samd`): s = static_len - l_bias (5); if max(dyn_len, s) >= l_threshold (5):
  chain of n_predicts = 40 nodes from the dynamic automaton when dyn_len >= s, else the static one;
  otherwise the Token Recycling tree (SOURCE_FALLBACK). Both are computed for every sequence and the
  tree is chosen per sequence with `torch.where` on the source: no Python branch, no sync.
After commit, `update` advances the static matches and extends the dynamic automata over the emitted
tokens (match first, then extend) and, for `sam+tr`, refreshes the Token Recycling table.
With `-O store=...` (parts/store.py) a cross-request store of earlier responses is a third source:
its match length, less store_bias, competes in the same rule (ties: dynamic, store, static) when
its match has a continuation (one ending a stored response leaves the choice to the others), and
`finish` appends each finished response to it.

Example (`sam+tr`): static_len 12, dyn_len 6 -> s = 7 > 6: a 40-node chain from the static corpus;
static_len 8, dyn_len 3 -> max(3, 3) < 5: the TR tree.

The automata are a drafting part (samgpu/drafters/parts/automata.py) shared with `sam-tree` and
`merged`; Token Recycling's table and template likewise (parts/recycling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.drafters.parts import int32
from samgpu.drafters.parts.automata import SamAutomata
from samgpu.drafters.parts.recycling import TR_TEMPLATE_NODES, TokenRecycling
from samgpu.drafters.parts.store import StoreOptions
from samgpu.drafters.protocol import DrafterBase, NewRequests
from samgpu.drafters.registry import DrafterContext, Method, chain_budget, register, tree_budget
from samgpu.kernels.sam_draft import SamSelectConfig
from samgpu.types import SOURCE_FALLBACK, SOURCE_NONE, DecodeState, DraftTree, StepOutput


@dataclass(frozen=True, kw_only=True)
class SamOptions(StoreOptions):
    """`sam`: the official samd_sam_only settings (+ the store's options, off by default)."""

    l_bias: int = 0
    max_predicts: int = 60  # chain nodes at most, root included
    alpha: float = 4.0  # chain nodes = min(max_predicts, 1 + floor(alpha * match_len))
    max_nodes: int | None = None  # tree width cap (batch budget); None: max_predicts
    use_static: bool = True  # draft from the static index when one is given
    use_dynamic: bool = True
    climb_dynamic: bool = False  # the sam_only script does not climb
    stop_at_eos: bool = True

    def select_config(self) -> SamSelectConfig:
        cap = self.max_predicts
        if self.max_nodes is not None:
            cap = min(cap, self.max_nodes)
        return SamSelectConfig(
            mode="longest",
            l_bias=self.l_bias,
            max_predicts=max(1, cap),
            alpha=self.alpha,
            climb_dynamic=self.climb_dynamic,
            stop_at_eos=self.stop_at_eos,
            store_bias=self.store_bias,
        )


@dataclass(frozen=True, kw_only=True)
class SamTrOptions(StoreOptions):
    """`sam+tr`: the paper's defaults (official samd) (+ the store's options, off by default)."""

    l_bias: int = 5
    l_threshold: int = 5
    n_predicts: int = 40  # chain nodes, root included
    max_nodes: int = TR_TEMPLATE_NODES  # tree width: TR template nodes kept; caps the chain too
    prompt_bigrams: bool = True  # seed the TR table from the prompts' bigrams at prefill
    use_static: bool = True
    use_dynamic: bool = True
    climb_dynamic: bool = True
    stop_at_eos: bool = True

    def select_config(self) -> SamSelectConfig:
        return SamSelectConfig(
            mode="threshold",
            l_bias=self.l_bias,
            l_threshold=self.l_threshold,
            n_predicts=max(1, min(self.n_predicts, self.max_nodes)),
            climb_dynamic=self.climb_dynamic,
            stop_at_eos=self.stop_at_eos,
            store_bias=self.store_bias,
        )


class SamDrafter(DrafterBase):
    """`sam` (chain only) and `sam+tr` (chain, else the Token Recycling tree)."""

    def __init__(self, ctx: DrafterContext, options: SamOptions | SamTrOptions):
        self.name = "sam+tr" if isinstance(options, SamTrOptions) else "sam"
        self.options = options
        if options.max_nodes is not None and options.max_nodes < 1:
            raise ValueError(f"max_nodes={options.max_nodes} must be >= 1")
        self.config = options.select_config()
        self.automata = SamAutomata.for_method(ctx, options)
        chain_nodes = self.config.max_chain_nodes
        self.max_nodes = chain_nodes
        self.max_depth = chain_nodes - 1
        self.recycling = None
        if isinstance(options, SamTrOptions):
            self.recycling = TokenRecycling(
                ctx.vocab_size, options.max_nodes, ctx.device, options.prompt_bigrams
            )
            self.max_nodes = max(chain_nodes, self.recycling.num_nodes)
            self.max_depth = max(chain_nodes - 1, self.recycling.max_depth)
            self._tr_tree = DraftTree.empty(ctx.max_reqs, self.max_nodes, ctx.device)
        self._source = int32((ctx.max_reqs,), SOURCE_NONE, ctx.device)
        self._chain_len = int32((ctx.max_reqs,), 0, ctx.device)
        self.last_source = self._source

    def prepare(self, state: DecodeState, new: NewRequests) -> None:
        self.automata.prepare(state, new)

    def start(self, state: DecodeState, new: NewRequests) -> None:
        self.automata.start(state, new)
        if self.recycling is not None:
            self.recycling.start(state, new)

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        B = state.num_reqs
        source, chain_len = self._source[:B], self._chain_len[:B]
        self.automata.draft_chain(state.root, tree, self.config, source, chain_len)
        if self.recycling is None:
            return
        N = tree.max_nodes
        tr = self._tr_tree.rows(B)
        tr = DraftTree(tr.tokens[:, :N], tr.parents[:, :N], tr.num_nodes)
        self.recycling.fill(state.root, tr)
        tree.replace_rows(source == SOURCE_FALLBACK, tr)

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self.automata.update(step)
        if self.recycling is not None:
            self.recycling.update(step)

    def finish(self, state: DecodeState, rows: torch.Tensor) -> None:
        self.automata.finish(state, rows)


register(
    Method(
        name="sam",
        summary="SAM-Decoding alone: chain from the automaton with the longer match",
        options=SamOptions,
        build=SamDrafter,
        needs_index=True,
        budget=chain_budget,
        node_bound=lambda options: options.select_config().max_chain_nodes,
    )
)
register(
    Method(
        name="sam+tr",
        summary="SAM-Decoding: chain if a match is long enough, else the Token Recycling tree",
        options=SamTrOptions,
        build=SamDrafter,
        needs_index=True,
        budget=tree_budget,
    )
)
