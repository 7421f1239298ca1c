"""The method registry: one `Method` entry per drafting method, found by name.

    register(Method(name="pld", summary="prompt lookup", options=PldOptions, build=PldDrafter))

An entry says everything the rest of samgpu needs to know about a method: its options (a frozen
dataclass, validated by name and by its own __post_init__), whether it drafts from the static
index, how its draft budget (`max_nodes`, nodes per sequence) follows the batch size, and how to
build it from a `DrafterContext`. Adding a method is one file (the drafter and its `register`
call) plus its import in `samgpu/drafters/__init__.py`; the CLI, the API and the benchmarks list
and build methods from here only. Tests register their own drafters the same way.

Budgets (nodes per sequence, root included) come from the measured verify cost t(B, N)
(profiling/results/logs/runtime.log, H200, SmolLM2-135M bf16) and end-to-end runs: at B=1 a step
is launch-bound and flat up to N=128, so the full 81-node Token Recycling template is free; at
B=64 t(N)/t(1) is 1.13 (N=2), 1.21 (4), 1.40 (8), 1.81 (16). Once Token Recycling's per-node
top-8 stopped costing a radix select per step, `samgpu generate` on the mixed file (bench_serve,
20261130-h200-serve-v8-*.jsonl) put the best budgets at 16 nodes for B=16 (merged 1.41x `ar`;
32 nodes: 1.34x), 8-12 for B=64 (merged 1.21-1.22x; 4 nodes: 1.05x; 16: 1.16x) and 2 for B=256
(merged 1.11x; 4 nodes: 1.07x).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from samgpu.drafters.protocol import Drafter

# (max batch size, nodes per sequence): the first row whose bound covers B wins.
TREE_BUDGETS: tuple[tuple[int, int], ...] = (
    (1, 81), (2, 64), (4, 48), (8, 32), (16, 16), (32, 12), (64, 8), (1 << 30, 2),
)  # fmt: skip
CHAIN_BUDGETS: tuple[tuple[int, int], ...] = ((4, 61), (16, 21), (32, 11), (64, 4), (1 << 30, 2))
# pld's chain (H200, SmolLM2, the mixed file, profiling/results/20261130-h200-pld-budgets-14ad9c8
# .jsonl): 11 nodes best at B=1 (vs 21 and 41), 5-11 alike at B=16, 5 best at B=64 (1.46x `ar`
# vs 1.37x with 11) and at B=256 (1.27x vs 1.06x with 11, 1.21x with 2).
PLD_BUDGETS: tuple[tuple[int, int], ...] = ((4, 11), (16, 7), (1 << 30, 5))


def _budget(table: tuple[tuple[int, int], ...], batch_size: int) -> int:
    return next(n for bound, n in table if batch_size <= bound)


def tree_budget(batch_size: int) -> int:
    return _budget(TREE_BUDGETS, batch_size)


def chain_budget(batch_size: int) -> int:
    return _budget(CHAIN_BUDGETS, batch_size)


def pld_budget(batch_size: int) -> int:
    return _budget(PLD_BUDGETS, batch_size)


@dataclass(frozen=True)
class DrafterContext:
    """What a builder gets besides the method's options."""

    vocab_size: int
    max_reqs: int  # slots (rows of every per-sequence buffer)
    max_len: int  # per-sequence capacity (prompt + generated + draft nodes)
    device: torch.device
    index: Any = None  # static automaton source: SamIndex, path, StaticAutomaton or None
    hidden_size: int | None = None  # the target's hidden size (model-based drafters)
    target: Any = None  # the target's runner (model-based drafters: embed, lm_head, dtype)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help and the docs
    options: type  # frozen dataclass of the method's options
    build: Callable[[DrafterContext, Any], Drafter]  # (context, options instance) -> drafter
    needs_index: bool = False  # drafts from the static corpus index
    budget: Callable[[int], int] | None = None  # batch size -> max_nodes (options.max_nodes)
    # options -> the most nodes its trees can have (sizes the KV cache before the drafter is
    # built); default: options.max_nodes
    node_bound: Callable[[Any], int] | None = None
    listed: bool = True  # offered to users (test-only drafters are not)
    head_layers: int = 0  # layers of a KV cache of the target's shape the drafter owns (EAGLE: 1)

    def max_nodes(self, options: Any) -> int:
        if self.node_bound is not None:
            return int(self.node_bound(options))
        return int(options.max_nodes)


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method (a name already taken is an error: one name, one method)."""
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"method {method.name!r} is already registered")
    if not dataclasses.is_dataclass(method.options):
        raise TypeError(f"method {method.name!r}: options must be a dataclass type")
    has_max_nodes = "max_nodes" in _field_names(method.options)
    if method.budget is not None and not has_max_nodes:
        raise TypeError(f"method {method.name!r} has a budget rule but no max_nodes option")
    if method.node_bound is None and not has_max_nodes:
        raise TypeError(f"method {method.name!r} needs a node_bound or a max_nodes option")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def method_names(*, listed_only: bool = True) -> tuple[str, ...]:
    return tuple(n for n, m in _METHODS.items() if m.listed or not listed_only)


def get_method(name: str) -> Method:
    method = _METHODS.get(name)
    if method is None:
        raise ValueError(f"unknown method {name!r}; valid: {list(method_names())}")
    return method


def _field_names(options: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(options))


# the option types checked before an options dataclass is built, as its error names them
_TYPE_NAMES = {
    int: "an int",
    float: "a number",
    bool: "a bool (true or false)",
    str: "a string",
    types.NoneType: "None",
}


def _type_error(name: str, annotation: Any, value: Any) -> str | None:
    """Why `value` does not fit a field annotated with `annotation` (a union of int, float, bool,
    str, None; anything else is left to the dataclass), or None when it fits."""
    union = isinstance(annotation, types.UnionType)
    kinds = typing.get_args(annotation) if union else (annotation,)
    if not all(k in _TYPE_NAMES for k in kinds):
        return None

    def fits(kind: type) -> bool:
        if isinstance(value, bool):  # True is an int to Python, not here
            return kind is bool
        return isinstance(value, int | float) if kind is float else isinstance(value, kind)

    if any(fits(k) for k in kinds):
        return None
    return f"{name} must be {' or '.join(_TYPE_NAMES[k] for k in kinds)}, got {value!r}"


def make_options(method: Method, options: dict[str, Any]) -> Any:
    """The method's options dataclass from keyword values; unknown names and values of the wrong
    type (`-O max_nodes=abc`) are ValueErrors naming the option (the dataclass's own
    __post_init__ checks the values' ranges)."""
    valid = _field_names(method.options)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = f"valid: {valid}" if valid else "it takes none (a misspelt argument?)"
        raise ValueError(f"unknown option(s) {unknown} for method {method.name!r}; {takes}")
    hints = typing.get_type_hints(method.options)
    for name, value in options.items():
        error = _type_error(name, hints[name], value)
        if error is not None:
            raise ValueError(f"method {method.name!r}: {error}")
    opts = method.options(**options)
    if method.max_nodes(opts) > MAX_DRAFT_NODES:  # (buffers scale with it: refuse, not allocate)
        raise ValueError(
            f"method {method.name!r}: its options ask for trees of {method.max_nodes(opts)} nodes;"
            f" samgpu builds at most {MAX_DRAFT_NODES} (lower max_nodes or its tree size options)"
        )
    return opts


# The widest draft tree (root included) any method may ask for: the default trees are <= 81
# nodes; a verify step's buffers, graphs and logits scale with it (-O max_nodes=1e11 tried to
# allocate 2 PB).
MAX_DRAFT_NODES: int = 1024


def budget_options(name: str, batch_size: int) -> dict[str, int]:
    """{"max_nodes": ...} giving `name` its default draft budget at `batch_size` sequences, or {}
    for methods without a budget rule."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    method = get_method(name)
    return {} if method.budget is None else {"max_nodes": method.budget(batch_size)}


def build_drafter(
    name: str,
    *,
    vocab_size: int,
    max_reqs: int,
    max_len: int,
    device: torch.device | str,
    index: Any = None,
    hidden_size: int | None = None,
    target: Any = None,
    **options: Any,
) -> Drafter:
    """A drafter for method `name` with buffers for `max_reqs` sequences of `max_len` tokens.
    `index`: the static automaton for methods that draft from one (SamIndex, path,
    StaticAutomaton, or None: no static automaton); ignored by the others."""
    method = get_method(name)
    if vocab_size < 1 or max_reqs < 1 or max_len < 2:
        raise ValueError(
            f"need vocab_size >= 1, max_reqs >= 1, max_len >= 2; got {vocab_size}, {max_reqs}, "
            f"{max_len}"
        )
    ctx = DrafterContext(
        vocab_size=vocab_size,
        max_reqs=max_reqs,
        max_len=max_len,
        device=torch.device(device),
        index=index if method.needs_index else None,
        hidden_size=hidden_size,
        target=target,
    )
    opts = make_options(method, options)
    drafter = method.build(ctx, opts)
    if drafter.max_nodes > method.max_nodes(opts):
        raise ValueError(
            f"method {name!r} built a drafter of {drafter.max_nodes} nodes, above its declared "
            f"bound {method.max_nodes(opts)}"
        )
    return drafter


__all__ = [
    "CHAIN_BUDGETS",
    "TREE_BUDGETS",
    "DrafterContext",
    "Method",
    "budget_options",
    "build_drafter",
    "chain_budget",
    "get_method",
    "make_options",
    "method_names",
    "register",
    "tree_budget",
    "unregister",
]
