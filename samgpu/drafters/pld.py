"""`pld`: prompt lookup decoding on the GPU, the classic model-free baseline.

Each step, per sequence: the longest n-gram (n = max_ngram down to min_ngram) ending the committed
text that also occurs earlier in it; the **latest** occurrence followed by a whole chain of
`max_nodes - 1` tokens wins, else the earliest (transformers' prompt lookup and the original PLD
code take the earliest; this drafts better, kernels/pld.py); its continuation, up to
`max_nodes - 1` tokens, is drafted as a chain. Example: text "a b c x a b c y a b c" -> the 3-gram
"a b c" occurs at 0 and 4; with max_nodes 5 four tokens follow the one at 4 -> draft "y a b c";
with 11 none has ten after it -> the earliest: draft "x a b c y a b c". One kernel launch per
step (samgpu.kernels.pld), no state. The chain's length follows the batch size (`pld_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass

from samgpu.drafters.protocol import DrafterBase
from samgpu.drafters.registry import DrafterContext, Method, pld_budget, register
from samgpu.kernels.pld import pld_draft
from samgpu.types import DecodeState, DraftTree


@dataclass(frozen=True, kw_only=True)
class PldOptions:
    max_nodes: int = 11  # nodes per step, root included: a chain of max_nodes - 1 drafts
    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self):
        if self.max_nodes < 2:
            raise ValueError(f"max_nodes={self.max_nodes} must be >= 2 (one draft token)")
        if not 1 <= self.min_ngram <= self.max_ngram <= 8:
            raise ValueError(
                f"need 1 <= min_ngram={self.min_ngram} <= max_ngram={self.max_ngram} <= 8"
            )


class PldDrafter(DrafterBase):
    """Drafts from the committed text alone: no per-slot state to start, update or finish."""

    name = "pld"

    def __init__(self, ctx: DrafterContext, options: PldOptions):
        self.options = options
        self.max_nodes = options.max_nodes
        self.max_depth = options.max_nodes - 1

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        o = self.options
        pld_draft(
            state.text,
            state.text_len,
            tree.tokens,
            tree.parents,
            tree.num_nodes,
            num_draft=min(o.max_nodes, tree.max_nodes) - 1,
            max_ngram=o.max_ngram,
            min_ngram=o.min_ngram,
        )


register(
    Method(
        name="pld",
        summary="prompt lookup: longest n-gram (3..1) suffix match, latest with a whole chain",
        options=PldOptions,
        build=PldDrafter,
        budget=pld_budget,
    )
)
