"""The drafter protocol: what the engine and the scheduler call, and when.

Lifecycle of one request in a slot (row b of every [B, ...] buffer):
  prepare(state, new)    the prompts' own state in slots `new.rows` (their text: new.prompts(state);
                         `new.lengths` is their length on those rows, 0 elsewhere), e.g. automaton
                         builds: work that reads only the prompts and reads or writes only those
                         rows' state, so that the engine may run it on a second stream beside the
                         decode steps of the other slots (an overlapped admission, before the
                         slots land; the steps reach these rows with num_new 0 and must not write
                         them then). Then start gets `new.prepared`; else start calls it.
                         Without prepare work, keep DrafterBase's: nothing then runs beside.
  start(state, new)      the slots landed: the rest of the set-up (state shared between slots,
                         such as a table or a store, which the other slots' steps also use).
  propose(state, tree)   every step, before the target's forward: fill the draft tree in place
                         (tree.tokens[:, 0] = state.root; at most tree.max_nodes nodes).
  update(state, step)    every step, after verify and commit: advance over the emitted tokens
                         (step.new_tokens[:, :step.num_new]); recycle step.logits / step.hidden.
  finish(state, rows)    at the host check that collects finished requests, before their slots
                         are reused: their whole text (prompt + response) is still in state.text.
propose and update run inside the captured CUDA graph of a step when `graph_safe`: fixed shapes,
no host reads, no allocation. start and finish run between steps and may allocate and launch
kernels, but should not read GPU values on the host (they sit on the decode critical path when
slots are refilled).

Declared needs: `needs_hidden` asks the engine for the target's last hidden states of every tree
node (`step.hidden [B, N, H]`, e.g. for an EAGLE head) and of the prompts (`new.hidden`). A
drafter that keeps its own KV cache compacts it in `update` with the accepted path
(`step.accepted_nodes`, `step.num_accepted`, node slots based at `step.start_len`), as the engine
does for the target's cache.

`DrafterBase` gives the defaults: graph-safe, no hidden states, a single draft source
(`last_source = None`; multi-source drafters keep a [max_reqs] int32 buffer of SOURCE_* codes),
no-op prepare, start and finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from samgpu.types import DecodeState, DraftTree, StepOutput


@dataclass
class NewRequests:
    """Slots that just received prompts (the argument of `Drafter.start`)."""

    rows: torch.Tensor  # [n] int64, distinct slot indices
    lengths: torch.Tensor  # [B] int32; prompt length on `rows`, 0 on every other row
    longest: int  # the longest of these prompts (a host value: loops need no sync)
    # the target's last hidden states of prompt[:-1], [n, longest - 1, H], row i for rows[i]
    # (right-padded), when the drafter `needs_hidden`; None otherwise
    hidden: torch.Tensor | None = None
    prepared: bool = False  # Drafter.prepare already ran for these rows (beside decode steps)
    # prepare's prompts, [B, >= longest] by slot, when state.text does not hold them yet (beside
    # the steps: the slots' rows of state.text are still the last requests', which the other
    # slots' drafting may read); None: state.text
    text: torch.Tensor | None = None

    def prompts(self, state: DecodeState) -> torch.Tensor:
        return state.text if self.text is None else self.text

    @staticmethod
    def whole_batch(state: DecodeState) -> NewRequests:
        """Every row of `state` starts from its committed text (tests, benchmarks; reads the
        lengths on the host once, which the engine never does)."""
        lengths = state.text_len.clone()
        rows = torch.arange(state.num_reqs, device=lengths.device)
        return NewRequests(rows=rows, lengths=lengths, longest=int(lengths.max()))


@runtime_checkable
class Drafter(Protocol):
    name: str
    max_nodes: int  # N of the trees it writes (tree buffers are [B, N])
    max_depth: int  # deepest node depth it can write (accepted-path buffers are [B, max_depth+1])
    graph_safe: bool  # propose/update can be captured in a CUDA graph
    needs_hidden: bool  # wants step.hidden (the target's last hidden states)
    last_source: torch.Tensor | None  # [max_reqs] int32 SOURCE_* of the last propose, or None

    def prepare(self, state: DecodeState, new: NewRequests) -> None: ...

    def start(self, state: DecodeState, new: NewRequests) -> None: ...

    def propose(self, state: DecodeState, tree: DraftTree) -> None: ...

    def update(self, state: DecodeState, step: StepOutput) -> None: ...

    def finish(self, state: DecodeState, rows: torch.Tensor) -> None: ...


class DrafterBase:
    """Defaults of the protocol; subclasses set name, max_nodes, max_depth and propose."""

    name: str = "?"
    max_nodes: int = 1
    max_depth: int = 0
    graph_safe: bool = True
    needs_hidden: bool = False
    last_source: torch.Tensor | None = None

    def prepare(self, state: DecodeState, new: NewRequests) -> None:
        pass

    def start(self, state: DecodeState, new: NewRequests) -> None:
        pass

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        raise NotImplementedError

    def update(self, state: DecodeState, step: StepOutput) -> None:
        pass

    def finish(self, state: DecodeState, rows: torch.Tensor) -> None:
        pass


def _overrides(drafter: Drafter, hook: str) -> bool:
    """Whether `drafter`'s class has `hook` of its own (a class without it has nothing to do)."""
    base = getattr(DrafterBase, hook)
    return getattr(type(drafter), hook, base) is not base


def finishes(drafter: Drafter) -> bool:
    """Whether `drafter` has finish work (its class overrides DrafterBase.finish): else the
    engine uploads nothing for it when requests end."""
    return _overrides(drafter, "finish")


def prepares(drafter: Drafter) -> bool:
    """Whether `drafter` has prepare work (its class overrides DrafterBase.prepare): else an
    overlapped admission runs nothing beside the steps for it."""
    return _overrides(drafter, "prepare")


__all__ = ["Drafter", "DrafterBase", "NewRequests", "finishes", "prepares"]
