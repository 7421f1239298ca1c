"""Draft source selection per sequence: static automaton, dynamic automaton or the fallback drafter.

Inputs: the static and dynamic match lengths [B] (either may be absent). Outputs: `source [B]`
(SOURCE_STATIC / SOURCE_DYNAMIC / SOURCE_FALLBACK / SOURCE_NONE, the values of samgpu.types) and
`nodes [B]`, the chain's node budget INCLUDING the root (draft tokens <= nodes - 1), as the official
code's `n_predicts` counts the start token. The rule (`SamSelectConfig.mode`, DESIGN.md §3):
- "threshold" (`sam+tr`, official `samd`): biased = static_len - l_bias; if max(dyn_len, biased) >=
  l_threshold: the dynamic automaton when dyn_len >= biased (ties go to the dynamic one), else the
  static one, n_predicts nodes; otherwise SOURCE_FALLBACK (the auxiliary tree drafter).
- "longest" (`sam`, official `samd_sam_only`): the same winner without a threshold and
  nodes = min(max_predicts, 1 + floor(alpha * winner's length)) (static length biased); SOURCE_NONE
  when the winner's length is <= 0. `SamSelectConfig.sam_only()` gives the official script's values
  (l_bias 0, max_predicts 60, alpha 4, no dynamic climb). Note: when the static automaton wins,
  the official code drafts a count-ranked TREE of that many nodes (kernels/sam_tree.py); a chain
  here is the chain variant of it.
- "static" / "dynamic": that automaton whenever its match is non-empty, n_predicts nodes.
A missing static automaton counts as static_len 0 (the official NullStaticSAM), a missing dynamic
one is never chosen. The fused `sam_draft_chain` applies the same rule and then turns an empty chain
into SOURCE_FALLBACK ("threshold") or SOURCE_NONE.

Example: static_len 12, dyn_len 6, l_bias 5, l_threshold 5 -> biased 7 > 6: SOURCE_STATIC, 40
nodes; static_len 8, dyn_len 3 -> max(3, 3) < 5: SOURCE_FALLBACK; "longest" with l_bias 0,
static_len 2, dyn_len 2 -> SOURCE_DYNAMIC (tie), min(60, 1 + 8) = 9 nodes.

Branch-free, vectorised over BLOCK_B sequences per program. No host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import triton
import triton.language as tl

from samgpu.kernels import _sam_jit as J
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton

SOURCE_NONE: int = J.SOURCE_NONE
SOURCE_STATIC: int = J.SOURCE_STATIC
SOURCE_DYNAMIC: int = J.SOURCE_DYNAMIC
SOURCE_FALLBACK: int = J.SOURCE_FALLBACK
MODES: dict[str, int] = {
    "threshold": J.MODE_THRESHOLD,
    "longest": J.MODE_LONGEST,
    "static": J.MODE_STATIC,
    "dynamic": J.MODE_DYNAMIC,
}
BLOCK_B: int = 128


@dataclass(frozen=True, kw_only=True)
class SamSelectConfig:
    """Selection and chain-length policy (defaults: the paper's `sam+tr`)."""

    mode: Literal["threshold", "longest", "static", "dynamic"] = "threshold"
    l_bias: int = 5  # subtracted from the static match length before comparing
    l_threshold: int = 5  # "threshold": minimum (biased) match length for a chain
    n_predicts: int = 40  # chain nodes including the root (threshold / forced modes)
    max_predicts: int = 60  # "longest": cap on chain nodes
    alpha: float = 4.0  # "longest": nodes = min(max_predicts, 1 + floor(alpha * match_len))
    climb_dynamic: bool = True  # climb suffix links while the continuation is short (official samd)
    stop_at_eos: bool = True  # static chains end at (and include) the index's EOS separator

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {sorted(MODES)}")
        for name in ("l_bias", "l_threshold", "n_predicts", "max_predicts"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"{name} must be an int, got {getattr(self, name)!r}")
        if self.n_predicts < 1 or self.max_predicts < 1:
            raise ValueError(
                f"n_predicts={self.n_predicts} and max_predicts={self.max_predicts} must be >= 1 "
                "(node counts including the root)"
            )
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")

    @staticmethod
    def sam_only() -> SamSelectConfig:
        """The official `samd_sam_only` script: longest match, no bias, up to 60 nodes, alpha 4,
        no dynamic climb."""
        return SamSelectConfig(mode="longest", l_bias=0, max_predicts=60, climb_dynamic=False)

    @property
    def mode_id(self) -> int:
        return MODES[self.mode]

    @property
    def max_chain_nodes(self) -> int:
        """Most nodes (root included) a chain can take under this config."""
        return self.max_predicts if self.mode == "longest" else self.n_predicts


@triton.jit(do_not_specialize=["num_reqs", "mode", "l_bias", "l_threshold"])
def _sam_select_kernel(
    static_len_ptr,  # [B] int32 (read when HAS_STATIC)
    dyn_len_ptr,  # [B] int32 (read when HAS_DYNAMIC)
    source_ptr,  # [B] int32 (out)
    nodes_ptr,  # [B] int32 (out)
    num_reqs,  # B
    mode,
    l_bias,
    l_threshold,
    n_predicts,
    max_predicts,
    alpha,  # fp32
    HAS_STATIC: tl.constexpr,
    HAS_DYNAMIC: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """One program per BLOCK_B sequences, vectorised."""
    offs = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    live = offs < num_reqs
    if HAS_STATIC:
        static_len = tl.load(static_len_ptr + offs, mask=live, other=0)
    else:
        static_len = tl.zeros([BLOCK_B], dtype=tl.int32)
    if HAS_DYNAMIC:
        dyn_len = tl.load(dyn_len_ptr + offs, mask=live, other=0)
    else:
        dyn_len = tl.full([BLOCK_B], J.NO_MATCH_DYN, tl.int32)
    src, nodes = J.select_source(
        static_len, dyn_len, mode, l_bias, l_threshold, n_predicts, max_predicts, alpha
    )
    tl.store(source_ptr + offs, src, mask=live)
    tl.store(nodes_ptr + offs, nodes, mask=live)


def _check(static_len, dyn_len, source, nodes) -> int:
    given = [t for t in (static_len, dyn_len) if t is not None]
    if not given:
        raise ValueError("sam_select needs static_len, dyn_len or both")
    b = given[0].shape[0]
    named = (("static_len", static_len), ("dyn_len", dyn_len), ("source", source))
    for name, t in (*named, ("nodes", nodes)):
        if t is None:
            continue
        if t.shape != (b,) or t.dtype != torch.int32 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous [B={b}] int32 tensor, got {t.shape}")
    return b


def _alloc(b: int, like: torch.Tensor, out):
    if out is not None:
        return out
    return (
        torch.empty(b, dtype=torch.int32, device=like.device),
        torch.empty(b, dtype=torch.int32, device=like.device),
    )


def sam_select_triton(
    static_len: torch.Tensor | None,
    dyn_len: torch.Tensor | None,
    config: SamSelectConfig,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(source [B], nodes [B]) int32 from the match lengths [B]; out=(source, nodes) to reuse."""
    like = static_len if static_len is not None else dyn_len
    b = _check(static_len, dyn_len, *(out if out is not None else (None, None)))
    source, nodes = _alloc(b, like, out)
    if b == 0:
        return source, nodes
    _sam_select_kernel[(triton.cdiv(b, BLOCK_B),)](
        static_len if static_len is not None else like,
        dyn_len if dyn_len is not None else like,
        source,
        nodes,
        b,
        config.mode_id,
        config.l_bias,
        config.l_threshold,
        config.n_predicts,
        config.max_predicts,
        float(config.alpha),
        HAS_STATIC=static_len is not None,
        HAS_DYNAMIC=dyn_len is not None,
        BLOCK_B=BLOCK_B,
        num_warps=1,
    )
    return source, nodes


def sam_select_ref(
    static_len: torch.Tensor | None,
    dyn_len: torch.Tensor | None,
    config: SamSelectConfig,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: `_sam_jit.select_source_py` per sequence. Reads 8 B, writes 8 B per sequence."""
    like = static_len if static_len is not None else dyn_len
    b = _check(static_len, dyn_len, *(out if out is not None else (None, None)))
    source, nodes = _alloc(b, like, out)
    for i in range(b):
        s = int(static_len[i]) if static_len is not None else 0
        d = int(dyn_len[i]) if dyn_len is not None else -1
        src, n = J.select_source_py(
            s,
            d,
            config.mode_id,
            config.l_bias,
            config.l_threshold,
            config.n_predicts,
            config.max_predicts,
            config.alpha,
        )
        source[i] = src
        nodes[i] = n
    return source, nodes


def sam_select(
    static_len: torch.Tensor | None,
    dyn_len: torch.Tensor | None,
    config: SamSelectConfig,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select each sequence's draft source (Triton on CUDA tensors, the reference otherwise)."""
    like = static_len if static_len is not None else dyn_len
    if like is not None and use_triton(like):
        return sam_select_triton(static_len, dyn_len, config, out=out)
    return sam_select_ref(static_len, dyn_len, config, out=out)


_SIG = {
    "static_len_ptr": "*i32",
    "dyn_len_ptr": "*i32",
    "source_ptr": "*i32",
    "nodes_ptr": "*i32",
    "num_reqs": "i32",
    "mode": "i32",
    "l_bias": "i32",
    "l_threshold": "i32",
    "n_predicts": "i32",
    "max_predicts": "i32",
    "alpha": "fp32",
    "HAS_STATIC": "constexpr",
    "HAS_DYNAMIC": "constexpr",
    "BLOCK_B": "constexpr",
}
AOT_SPECS = [
    AotSpec(
        _sam_select_kernel,
        _SIG,
        {"HAS_STATIC": hs, "HAS_DYNAMIC": hd, "BLOCK_B": BLOCK_B},
        num_warps=1,
    )
    for hs, hd in ((True, True), (True, False), (False, True))
]
