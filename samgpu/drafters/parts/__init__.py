"""Drafting parts that method files compose: the SAM automata with their per-sequence matches
(`automata.SamAutomata`) and Token Recycling's table and template (`recycling.TokenRecycling`).
Each part follows the drafter lifecycle (start / update) for the state it owns."""

from __future__ import annotations

import torch


def int32(shape, fill: int, device) -> torch.Tensor:
    """A preallocated int32 buffer (drafters keep every buffer at capacity `max_reqs`)."""
    return torch.full(shape, fill, dtype=torch.int32, device=device)
