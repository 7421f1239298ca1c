"""`tr`: Token Recycling alone (Luo et al. 2024): every step, the template tree grown from the root
through the adjacency table of recycled top-8 successors (samgpu/drafters/parts/recycling.py, which
describes the table, the template and the budget)."""

from __future__ import annotations

from dataclasses import dataclass

from samgpu.drafters.parts import int32
from samgpu.drafters.parts.recycling import TR_TEMPLATE_NODES, TokenRecycling
from samgpu.drafters.protocol import DrafterBase, NewRequests
from samgpu.drafters.registry import DrafterContext, Method, register, tree_budget
from samgpu.types import SOURCE_FALLBACK, DecodeState, DraftTree, StepOutput


@dataclass(frozen=True, kw_only=True)
class TrOptions:
    max_nodes: int = TR_TEMPLATE_NODES  # template nodes kept (root included), best-first
    prompt_bigrams: bool = True  # seed the table from the prompts' bigrams at start

    def __post_init__(self):
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes={self.max_nodes} must be >= 1")


class TokenRecyclingDrafter(DrafterBase):
    name = "tr"

    def __init__(self, ctx: DrafterContext, options: TrOptions):
        self.options = options
        self.recycling = TokenRecycling(
            ctx.vocab_size, options.max_nodes, ctx.device, options.prompt_bigrams
        )
        self.max_nodes = self.recycling.num_nodes
        self.max_depth = self.recycling.max_depth
        self._source = int32((ctx.max_reqs,), SOURCE_FALLBACK, ctx.device)
        self.last_source = self._source

    def start(self, state: DecodeState, new: NewRequests) -> None:
        self.recycling.start(state, new)

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        self.recycling.fill(state.root, tree)

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self.recycling.update(step)


register(
    Method(
        name="tr",
        summary="Token Recycling: 80-node template tree from recycled top-8 successors",
        options=TrOptions,
        build=TokenRecyclingDrafter,
        budget=tree_budget,
    )
)
