"""Drafting parts that method files compose: the SAM automata with their per-sequence matches
(`automata.SamAutomata`), Token Recycling's table and template (`recycling.TokenRecycling`), and
the cross-request store of earlier responses (`store.SamStore`, its file format in
`store_file`; owned by SamAutomata when a method's `store` option is on). Each part follows the
drafter lifecycle (start / update / finish) for the state it owns."""

from __future__ import annotations

import torch


def int32(shape, fill: int, device) -> torch.Tensor:
    """A preallocated int32 buffer (drafters keep every buffer at capacity `max_reqs`)."""
    return torch.full(shape, fill, dtype=torch.int32, device=device)
