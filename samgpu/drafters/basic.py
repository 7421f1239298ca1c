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

from samgpu.drafters._common import check_batch, check_options
from samgpu.types import NO_PARENT, PAD_TOKEN, DecodeState, DraftTree, StepOutput


class ArDrafter:
    """`ar`: root only."""

    name = "ar"
    max_nodes = 1
    max_depth = 0
    graph_safe = True
    last_source = None

    def __init__(self, *, max_reqs: int, device: torch.device | str):
        self.max_reqs = max_reqs
        self.device = torch.device(device)

    def prefill(self, state: DecodeState) -> None:
        check_batch(state, self.max_reqs, self.name)

    def prefill_rows(self, state: DecodeState, rows: torch.Tensor) -> None:
        pass

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        tree.tokens[:, 0].copy_(state.root)
        tree.parents[:, 0].fill_(NO_PARENT)
        tree.num_nodes.fill_(1)

    def update(self, state: DecodeState, step: StepOutput) -> None:
        pass


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


class TestDrafter:
    """`test`: drafts a known continuation with injected errors; see the module docstring."""

    __test__ = False  # not a pytest class
    name = "test"
    graph_safe = True
    last_source = None

    def __init__(
        self, *, vocab_size: int, max_reqs: int, device: torch.device | str, options: TestOptions
    ):
        if vocab_size < 3:
            raise ValueError(f"the test drafter needs vocab_size >= 3, got {vocab_size}")
        self.options = options
        self.vocab_size = vocab_size
        self.max_reqs = max_reqs
        self.device = torch.device(device)
        d = options.depth
        self.max_depth = d
        self.max_nodes = 2 * d + 1 if options.branching else d + 1
        self._refs = {tuple(map(int, p)): list(map(int, c)) for p, c in options.references}
        width = max((len(c) for c in self._refs.values()), default=0) + d + 1
        self._cont = torch.full((max_reqs, width), PAD_TOKEN, dtype=torch.int32, device=device)
        self._offsets = torch.arange(d, device=self.device)
        self._slots = torch.arange(max_reqs, device=self.device)
        self._step = torch.zeros((), dtype=torch.int64, device=self.device)
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
        self._chain_idx = torch.tensor(chain_idx[1:], dtype=torch.long, device=self.device)
        self._parents = torch.tensor(parents, dtype=torch.int32, device=self.device)

    def prefill(self, state: DecodeState) -> None:
        B = check_batch(state, self.max_reqs, self.name)
        self._step.zero_()  # same prompts -> same drafts, batch after batch (seeded sampling)
        self.prefill_rows(state, torch.arange(B, device=self.device))

    def prefill_rows(self, state: DecodeState, rows: torch.Tensor) -> None:
        """The references of the prompts now in `rows` (all of a batch at prefill)."""
        text = state.text.index_select(0, rows).cpu()
        prompt_len = state.prompt_len.index_select(0, rows).cpu().tolist()
        self._cont.index_fill_(0, rows, PAD_TOKEN)
        for i, b in enumerate(rows.tolist()):
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


def build(method: str, *, vocab_size: int, max_reqs: int, device, **options):
    """Entry point of samgpu.drafters.build_drafter for `ar` and `test`."""
    if method == "ar":
        check_options(_NoOptions, method, options)
        return ArDrafter(max_reqs=max_reqs, device=device)
    if method == "test":
        check_options(TestOptions, method, options)
        return TestDrafter(
            vocab_size=vocab_size, max_reqs=max_reqs, device=device, options=TestOptions(**options)
        )
    raise ValueError(f"basic drafters are 'ar' and 'test', got {method!r}")


@dataclass(frozen=True)
class _NoOptions:
    pass
