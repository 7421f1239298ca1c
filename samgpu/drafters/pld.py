"""`pld`: prompt lookup decoding on the GPU, the classic model-free baseline.

Each step, per sequence: the longest n-gram (n = max_ngram down to min_ngram) ending the committed
text that also occurs earlier in it; the **earliest** occurrence wins (as in transformers'
prompt lookup and the original PLD code); its continuation, up to `num_draft` tokens, is drafted as
a chain. Example: text "a b c x a b c y a b c" -> the 3-gram "a b c" first occurs at 0 -> draft
"x a b c ..." (up to num_draft). One kernel launch per step (samgpu.kernels.pld), no state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.drafters._common import check_batch
from samgpu.kernels.pld import pld_draft
from samgpu.types import DecodeState, DraftTree, StepOutput


@dataclass(frozen=True, kw_only=True)
class PldOptions:
    num_draft: int = 10  # draft tokens per step (chain length)
    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self):
        if self.num_draft < 1:
            raise ValueError(f"num_draft={self.num_draft} must be >= 1")
        if not 1 <= self.min_ngram <= self.max_ngram <= 8:
            raise ValueError(
                f"need 1 <= min_ngram={self.min_ngram} <= max_ngram={self.max_ngram} <= 8"
            )


class PldDrafter:
    name = "pld"
    graph_safe = True

    def __init__(self, *, max_reqs: int, device: torch.device | str, options: PldOptions):
        self.options = options
        self.max_reqs = max_reqs
        self.device = torch.device(device)
        self.max_nodes = options.num_draft + 1
        self.max_depth = options.num_draft
        self.last_source = None  # a single source: the text itself

    def prefill(self, state: DecodeState) -> None:
        check_batch(state, self.max_reqs, self.name)

    def prefill_rows(self, state: DecodeState, rows: torch.Tensor) -> None:
        pass  # drafts from the committed text alone

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        o = self.options
        pld_draft(
            state.text,
            state.text_len,
            tree.tokens,
            tree.parents,
            tree.num_nodes,
            num_draft=min(o.num_draft, tree.max_nodes - 1),
            max_ngram=o.max_ngram,
            min_ngram=o.min_ngram,
        )

    def update(self, state: DecodeState, step: StepOutput) -> None:
        pass  # the committed text is the whole state
