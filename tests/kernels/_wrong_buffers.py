"""Wrong stand-ins for a kernel's buffers, for the launchers' shape/dtype/contiguity checks.

Each one is a view into a tensor at least as large as the right buffer, so a launcher that failed
to refuse it would have its kernel write into the rest of that tensor, never into memory the test
does not own: the test then fails on the missing ValueError, not on corrupted memory.
"""

from __future__ import annotations

import math

import torch

KINDS = ("rows", "width", "dtype", "strided")


def kinds_for(t: torch.Tensor) -> tuple[str, ...]:
    """The kinds that make `t` wrong: no 'width' for a vector (it is 'rows'), no 'strided' for a
    single element (always contiguous)."""
    return tuple(
        k
        for k in KINDS
        if not (k == "width" and t.ndim == 1) and not (k == "strided" and t.numel() < 2)
    )


def wrong(t: torch.Tensor, kind: str) -> torch.Tensor:
    """`t`'s stand-in, holding t's values (as many as fit): one row fewer ('rows'), the last
    dimension one narrower ('width'), the other int width ('dtype': int32 <-> int64), or the right
    shape at every other element ('strided'). (Its values are t's so that an unchecked kernel
    fails on the layout, not on garbage: a zeroed hash table would have no free entry and the
    probe would never end.)"""
    base = torch.zeros(2 * t.numel(), dtype=torch.int64, device=t.device)  # room for any of them
    if kind == "rows":
        return base.view(t.dtype)[: t.numel()].view(t.shape).copy_(t)[: t.shape[0] - 1]
    if kind == "width":
        shape = (*t.shape[:-1], t.shape[-1] - 1)
        return base.view(t.dtype)[: math.prod(shape)].view(shape).copy_(t[..., :-1])
    if kind == "dtype":
        other = torch.int32 if t.dtype == torch.int64 else torch.int64
        return base.view(other)[: t.numel()].view(t.shape).copy_(t)
    if kind == "strided":
        return base.view(t.dtype)[: 2 * t.numel() : 2].view(t.shape).copy_(t)
    raise ValueError(f"unknown kind {kind!r}")
