"""Plumbing shared by the drafters of this package: option dataclasses, per-batch views of
preallocated buffers, and the best-first ordering of the Token Recycling template.

Every drafter follows the Drafter protocol of docs/ARCHITECTURE.md (name, max_nodes, max_depth,
graph_safe, prefill/propose/update) and keeps its buffers at capacity `max_reqs`; a batch of
B <= max_reqs sequences uses the leading rows (views, never allocations, so steps can be captured
in CUDA graphs). `last_source [B] int32` holds the per-sequence draft source of the last `propose`
(samgpu.types SOURCE_*), or is None for drafters with a single source.
"""

from __future__ import annotations

import dataclasses

import torch

from samgpu.types import DecodeState, DraftTree


def check_options(cls: type, method: str, options: dict) -> None:
    """Unknown option names are a ValueError naming the valid ones."""
    valid = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid: {valid}")


def check_batch(state: DecodeState, max_reqs: int, name: str) -> int:
    B = state.num_reqs
    if B > max_reqs:
        raise ValueError(f"{name}: batch of {B} sequences exceeds max_reqs={max_reqs}")
    return B


def row_text(state: DecodeState, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(text [n, L], text_len [n]) of the slots `rows` (copies): the prompts of refilled slots."""
    return state.text.index_select(0, rows), state.text_len.index_select(0, rows)


def int32(shape, fill: int, device) -> torch.Tensor:
    return torch.full(shape, fill, dtype=torch.int32, device=device)


def rows(tree: DraftTree, num_reqs: int) -> DraftTree:
    """The leading `num_reqs` rows of a tree buffer allocated at capacity (views)."""
    return DraftTree(tree.tokens[:num_reqs], tree.parents[:num_reqs], tree.num_nodes[:num_reqs])
