"""Drafters without a model of the text: `ar` (no draft) and `test` (a known continuation).

`ar`: the tree is the root alone (N = 1, max_depth 0): every step verifies one node and emits the
bonus only, i.e. plain autoregressive decoding through the same loop, the baseline for speedups.

`test`: for the loop's tests. Given reference continuations (e.g. the target's greedy output) for
known prompts, it drafts, at every step, the next `depth` reference tokens after what the sequence
has generated so far (position num_generated), as a chain. `error_rate` replaces each drafted token
by a wrong one ((true + 1) mod V) with that probability, from a deterministic hash of (sequence
slot, position, step, seed) so runs are reproducible and graph-safe. With `branching`, every chain
node gets a wrong sibling ((true + 2) mod V) placed *before* it in index order, so verification
must walk past a rejected sibling (N = 2 * depth + 1).
Example: reference [7, 8, 9], depth 2, generated 1 so far, root 7: chain tokens [7, 8, 9],
parents [-1, 0, 1]; with branching: tokens [7, 9, 8, 10, 9], parents [-1, 0, 0, 2, 2].
Prompts are matched to references once per batch in `prefill` (a host read at set-up, not per
step); an unknown prompt drafts wrong tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from samgpu.drafters.protocol import DrafterBase, NewRequests
from samgpu.drafters.registry import DrafterContext, Method, register
from samgpu.types import NO_PARENT, PAD_TOKEN, DecodeState, DraftTree, StepOutput


class ArDrafter(DrafterBase):
    """`ar`: root only."""

    name = "ar"

    def __init__(self, ctx: DrafterContext | None = None, options: ArOptions | None = None):
        pass

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        tree.tokens[:, 0].copy_(state.root)
        tree.parents[:, 0].fill_(NO_PARENT)
        tree.num_nodes.fill_(1)


@dataclass(frozen=True)
class ArOptions:
    """`ar` takes no options."""


@dataclass(frozen=True, kw_only=True)
class TestOptions:
    __test__ = False  # not a pytest class

    # (prompt, continuation) pairs; the continuation is what the drafter proposes after the prompt
    references: Sequence[tuple[Sequence[int], Sequence[int]]] = ()
    depth: int = 4  # drafted tokens per step (chain length)
    error_rate: float = 0.0  # probability that a drafted token is replaced by a wrong one
    branching: bool = False  # add a wrong sibling before every chain node
    seed: int = 0

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth={self.depth} must be >= 1")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate={self.error_rate} must be in [0, 1]")


class TestDrafter(DrafterBase):
    """`test`: drafts a known continuation with injected errors; see the module docstring."""

    __test__ = False  # not a pytest class
    name = "test"

    def __init__(self, ctx: DrafterContext, options: TestOptions):
        if ctx.vocab_size < 3:
            raise ValueError(f"the test drafter needs vocab_size >= 3, got {ctx.vocab_size}")
        self.options = options
        self.vocab_size = ctx.vocab_size
        self.device = device = ctx.device
        d = options.depth
        self.max_depth = d
        self.max_nodes = 2 * d + 1 if options.branching else d + 1
        self._refs = {tuple(map(int, p)): list(map(int, c)) for p, c in options.references}
        width = max((len(c) for c in self._refs.values()), default=0) + d + 1
        self._cont = torch.full((ctx.max_reqs, width), PAD_TOKEN, dtype=torch.int32, device=device)
        self._offsets = torch.arange(d, device=device)
        self._slots = torch.arange(ctx.max_reqs, device=device)
        self._step = torch.zeros((), dtype=torch.int64, device=device)
        self._error_threshold = round(options.error_rate * 1_000_000)
        # Node layout: chain node j (depth j) at index chain_idx[j]; with branching, its wrong
        # sibling at chain_idx[j] - 1 (both children of chain node j - 1).
        if options.branching:
            chain_idx = [0] + [2 * j for j in range(1, d + 1)]
            parents = [NO_PARENT]
            for j in range(1, d + 1):
                parents += [chain_idx[j - 1], chain_idx[j - 1]]
        else:
            chain_idx = list(range(d + 1))
            parents = [NO_PARENT] + list(range(d))
        self._chain_idx = torch.tensor(chain_idx[1:], dtype=torch.long, device=device)
        self._parents = torch.tensor(parents, dtype=torch.int32, device=device)

    def start(self, state: DecodeState, new: NewRequests) -> None:
        """The references of the prompts now in `new.rows` (a host read: a test drafter). The
        error hash restarts when a whole batch starts (same prompts -> same drafts)."""
        if new.rows.numel() == state.num_reqs:
            self._step.zero_()
        text = state.text.index_select(0, new.rows).cpu()
        prompt_len = state.prompt_len.index_select(0, new.rows).cpu().tolist()
        self._cont.index_fill_(0, new.rows, PAD_TOKEN)
        for i, b in enumerate(new.rows.tolist()):
            cont = self._refs.get(tuple(text[i, : prompt_len[i]].tolist()))
            if cont:
                self._cont[b, : len(cont)] = torch.tensor(cont, dtype=torch.int32)

    def _errors(self, pos: torch.Tensor, B: int) -> torch.Tensor:
        """Deterministic pseudo-random error mask [B, depth] from (slot, position, step, seed)."""
        x = pos * 2654435761 + self._slots[:B, None] * 40503 + self._step * 97
        x = (x + self.options.seed * 1000003) & 0xFFFFFFFF
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
        x = x ^ (x >> 16)
        return (x % 1_000_000) < self._error_threshold

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        B, V = state.num_reqs, self.vocab_size
        pos = state.num_generated.long()[:, None] + self._offsets  # [B, depth]
        pos = pos.clamp(max=self._cont.shape[1] - 1)
        true = self._cont[:B].gather(1, pos).clamp(min=0)
        draft = torch.where(self._errors(pos, B), (true + 1) % V, true)
        tree.tokens[:, 0].copy_(state.root)
        tree.tokens[:, self._chain_idx] = draft
        if self.options.branching:
            tree.tokens[:, self._chain_idx - 1] = (true + 2) % V
        tree.parents[:, : self.max_nodes].copy_(self._parents.expand(B, -1))
        tree.num_nodes.fill_(self.max_nodes)

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self._step.add_(1)


register(
    Method(
        name="ar",
        summary="plain autoregressive decoding",
        options=ArOptions,
        build=ArDrafter,
        node_bound=lambda options: 1,
    )
)
register(
    Method(
        name="test",
        summary="error-injecting drafter of known continuations (tests and benchmarks)",
        options=TestOptions,
        build=TestDrafter,
        node_bound=lambda o: 2 * o.depth + 1 if o.branching else o.depth + 1,
        listed=False,
    )
)
