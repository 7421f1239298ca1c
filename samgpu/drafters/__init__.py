"""Drafters: the methods users choose, all on the GPU, batched, without host syncs.

    from samgpu.drafters import METHODS, build_drafter, default_budget
    drafter = build_drafter("sam+tr", vocab_size=V, max_reqs=8, max_len=4096, device="cuda",
                            index=samindex_or_path, max_nodes=default_budget("sam+tr", 8))

| method     | draft each step                                                          | source |
|------------|--------------------------------------------------------------------------|--------|
| `ar`       | nothing (root only): plain autoregressive decoding                        | basic  |
| `test`     | error-injecting drafter for the loop's tests                              | basic  |
| `pld`      | prompt lookup: longest n-gram (3..1) suffix match, earliest occurrence    | pld    |
| `tr`       | Token Recycling: adjacency [V, 8] + 80-node template tree                 | tr     |
| `sam`      | SAM-Decoding alone: chain from the automaton with the longer match        | sam    |
| `sam+tr`   | SAM-Decoding: chain if a match is long enough, else the TR tree            | sam    |
| `sam-tree` | tree from the automata: children ranked by occurrence count     | sam_tree |
| `merged`   | SAM chain and TR branches in one tree, de-duplicated, within a budget      | merged |

Options are keyword arguments of `build_drafter`, validated against each method's options dataclass;
an unknown method or option is a ValueError naming the valid ones. `default_budget(method, B)` gives
the tree size (nodes per sequence, root included) for a batch of B sequences: verification cost
grows with B x N, so large batches get small trees (refine from profiling/ measurements).
"""

from __future__ import annotations

import torch

from samgpu.drafters._common import check_options

METHODS: tuple[str, ...] = ("ar", "test", "pld", "tr", "sam", "sam+tr", "sam-tree", "merged")
TREE_METHODS: tuple[str, ...] = ("tr", "sam+tr", "sam-tree", "merged")
# Methods whose options take a tree width `max_nodes` (pld sizes its chain with `num_draft`).
BUDGETED_METHODS: tuple[str, ...] = ("sam", *TREE_METHODS)

# (max batch size, nodes per sequence) rows, first row whose bound covers B wins. From the measured
# verify cost t(B, N) (profiling/results/logs/runtime.log, H200, SmolLM2-135M bf16): at B=1 a step
# is launch-bound and flat up to N=128, so the full 81-node TR template is free; at B=64 t(N)/t(1)
# is 1.13 (N=2), 1.21 (4), 1.40 (8), 1.81 (16), and a batch also waits for its slowest sequence,
# so 8-node trees lost to plain decoding there (sam+tr 0.96x at B=64 with 8 nodes).
_BUDGETS: dict[str, tuple[tuple[int, int], ...]] = {
    "tree": ((1, 81), (2, 64), (4, 48), (8, 32), (16, 16), (32, 8), (64, 4), (1 << 30, 2)),
    "chain": ((4, 61), (16, 21), (32, 11), (64, 4), (1 << 30, 2)),
}


def default_budget(method: str, batch_size: int) -> int:
    """Draft tree size (root included) for `method` at batch size `batch_size`.

    Tree methods get a table shrinking from 81 nodes (B=1) to 4 (B=64); chain methods (sam, pld)
    a chain cap; `ar` gets 1."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if method in ("ar", "test"):
        return 1
    if method == "pld":
        return 11
    table = _BUDGETS["tree" if method in TREE_METHODS else "chain"]
    return next(n for bound, n in table if batch_size <= bound)


def budget_options(method: str, batch_size: int) -> dict[str, int]:
    """Options giving `method` its default tree budget for a batch of `batch_size`:
    {"max_nodes": default_budget(...)} for methods with a tree width, {} for ar, test and pld."""
    if method not in BUDGETED_METHODS:
        default_budget(method, batch_size)  # validates method and batch size
        return {}
    return {"max_nodes": default_budget(method, batch_size)}


def build_drafter(
    method: str,
    *,
    vocab_size: int,
    max_reqs: int,
    max_len: int,
    device: torch.device | str,
    index=None,
    **options,
):
    """A drafter for `method` (see METHODS) with buffers for `max_reqs` sequences of `max_len`.

    `index`: the static automaton for the SAM methods: a `samgpu.sam.SamIndex`, a path to a saved
    index, or None for the embedded default index (needs the `tokenizer=` option) or no static
    automaton when neither is given (option `use_static=False` makes that explicit)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    if vocab_size < 1 or max_reqs < 1 or max_len < 2:
        raise ValueError(
            f"need vocab_size >= 1, max_reqs >= 1, max_len >= 2; got {vocab_size}, {max_reqs}, "
            f"{max_len}"
        )
    if method in ("ar", "test"):
        from samgpu.drafters import basic

        return basic.build(
            method, vocab_size=vocab_size, max_reqs=max_reqs, device=device, **options
        )
    if method == "pld":
        from samgpu.drafters.pld import PldDrafter, PldOptions

        check_options(PldOptions, method, options)
        return PldDrafter(max_reqs=max_reqs, device=device, options=PldOptions(**options))
    if method == "tr":
        from samgpu.drafters.tr import TokenRecyclingDrafter, TrOptions

        check_options(TrOptions, method, options)
        return TokenRecyclingDrafter(
            vocab_size=vocab_size, max_reqs=max_reqs, device=device, options=TrOptions(**options)
        )
    if method in ("sam", "sam+tr"):
        from samgpu.drafters.sam import build_sam

        return build_sam(
            method,
            vocab_size=vocab_size,
            max_reqs=max_reqs,
            max_len=max_len,
            device=device,
            index=index,
            options=options,
        )
    if method == "sam-tree":
        from samgpu.drafters.sam_tree import build_sam_tree

        return build_sam_tree(
            vocab_size=vocab_size,
            max_reqs=max_reqs,
            max_len=max_len,
            device=device,
            index=index,
            options=options,
        )
    from samgpu.drafters.merged import build_merged

    return build_merged(
        vocab_size=vocab_size,
        max_reqs=max_reqs,
        max_len=max_len,
        device=device,
        index=index,
        options=options,
    )


__all__ = [
    "BUDGETED_METHODS",
    "METHODS",
    "TREE_METHODS",
    "budget_options",
    "build_drafter",
    "default_budget",
]
