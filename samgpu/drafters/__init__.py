"""Drafters: the methods users choose, all on the GPU, batched, without host syncs.

    from samgpu.drafters import build_drafter, method_names
    drafter = build_drafter("sam+tr", vocab_size=V, max_reqs=8, max_len=4096, device="cuda",
                            index=samindex_or_path, max_nodes=32)

| method         | draft each step                                                  | file         |
|----------------|------------------------------------------------------------------|--------------|
| `ar`           | nothing (root only): plain autoregressive decoding               | basic.py     |
| `pld`          | prompt lookup: longest n-gram (3..1) match, latest with a chain  | pld.py       |
| `tr`           | Token Recycling: adjacency [V, 8] + 80-node template tree        | tr.py        |
| `sam`          | SAM-Decoding alone: chain from the longer-matching automaton     | sam.py       |
| `sam+tr`       | SAM-Decoding: chain if a match is long enough, else the TR tree  | sam.py       |
| `sam-tree`     | tree from the automata: children ranked by occurrence count      | sam_tree.py  |
| `merged`       | SAM chain and TR branches in one tree, de-duplicated, in budget  | merged.py    |
| `eagle`        | EAGLE-2: dynamic tree from a one-layer head on hidden states     | eagle.py     |
| `sam+eagle`    | SAM chain if a match is long enough, else the EAGLE-2 tree       | eagle_sam.py |
| `merged+eagle` | SAM chain and the EAGLE-2 tree in one tree, in a budget          | eagle_sam.py |
| `test`         | error-injecting drafter of known continuations (unlisted)        | basic.py     |

The protocol every drafter follows (start / propose / update / finish) is in `protocol.py`; the
registry (`Method` entries: options, index need, budget rule, builder) in `registry.py`; the
drafting parts that method files compose (automata, Token Recycling, the cross-request store) in
`parts/`. Importing this package registers the built-in methods (the imports below).

The cross-request store (`-O store=true|PATH`, parts/store.py) is an option of the methods that
draft from automata (`sam`, `sam+tr`, `sam-tree`, `merged`, `sam+eagle`, `merged+eagle`):
`save_store(drafter)` writes it at the end of a run, `store_of(drafter)` gives the part (stats,
save, load, copy_from).
"""

from __future__ import annotations

# isort: off
# Built-in methods register themselves on import, in the order users see them listed.
from samgpu.drafters import basic, pld, tr, sam, sam_tree, merged, eagle, eagle_sam  # noqa: F401

# isort: on
from samgpu.drafters.parts.store import SamStore, StoreOptions, save_store, store_of
from samgpu.drafters.protocol import Drafter, DrafterBase, NewRequests
from samgpu.drafters.registry import (
    DrafterContext,
    Method,
    budget_options,
    build_drafter,
    get_method,
    method_names,
    register,
    unregister,
)

__all__ = [
    "Drafter",
    "DrafterBase",
    "DrafterContext",
    "Method",
    "NewRequests",
    "SamStore",
    "StoreOptions",
    "budget_options",
    "build_drafter",
    "get_method",
    "method_names",
    "register",
    "save_store",
    "store_of",
    "unregister",
]
