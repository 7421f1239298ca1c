"""A drafter added the way a new method is added: this one file and one `register` call. It drafts
a chain of the `depth` prompt tokens that follow position (tokens generated so far) of the prompt,
wrapping around: useless as a guess, valid as a draft, so the output must equal `ar`'s. The test
suite registers it (tests/drafters/test_registry.py) and runs it through the CLI."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.drafters import DrafterBase, DrafterContext, Method, register
from samgpu.types import NO_PARENT, DecodeState, DraftTree


@dataclass(frozen=True, kw_only=True)
class PromptEchoOptions:
    max_nodes: int = 5  # chain nodes, root included

    def __post_init__(self):
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes={self.max_nodes} must be >= 1")


class PromptEchoDrafter(DrafterBase):
    name = "prompt-echo"

    def __init__(self, ctx: DrafterContext, options: PromptEchoOptions):
        self.max_nodes = options.max_nodes
        self.max_depth = options.max_nodes - 1
        self._offsets = torch.arange(1, options.max_nodes, device=ctx.device)
        self._parents = torch.arange(-1, options.max_nodes - 1, device=ctx.device).int()
        self._parents[0] = NO_PARENT

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        n = self.max_nodes
        pos = (state.num_generated.long()[:, None] + self._offsets) % state.prompt_len[:, None]
        tree.tokens[:, 0] = state.root
        tree.tokens[:, 1:n] = state.text.gather(1, pos)
        tree.parents[:, :n] = self._parents
        tree.num_nodes.fill_(n)


METHOD = Method(
    name="prompt-echo",
    summary="test drafter: the prompt's tokens again, as a chain",
    options=PromptEchoOptions,
    build=PromptEchoDrafter,
)


def register_method() -> Method:
    return register(METHOD)
