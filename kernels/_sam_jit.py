"""@triton.jit helpers shared by the automaton kernels (sam_match, sam_draft, sam_tree).

Called as module attributes (`J.csr_find(...)`) so they are inlined into each kernel and compiled
through it (`python -m samgpu.kernels._aot` compiles the kernels, this module has none). Each helper
has a plain-Python twin (`*_py`) used by the references, so that both sides compute the same thing.
The host-side argument checks of those kernels' launchers live here too (`check_static_arrays`,
`check_chain_args`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels.types import (
    SOURCE_DYNAMIC,
    SOURCE_FALLBACK,
    SOURCE_NONE,
    SOURCE_STATIC,
    SOURCE_STORE,
)

# Selection modes (runtime ints, not constexprs: switching modes does not recompile).
MODE_THRESHOLD: int = (
    0  # `sam+tr`: chain if max(dyn, static - l_bias) >= l_threshold, else fallback
)
MODE_LONGEST: int = 1  # `sam`: always the longer match, n = min(max_predicts, 1 + floor(alpha*len))
MODE_STATIC: int = 2  # static automaton only
MODE_DYNAMIC: int = 3  # dynamic automaton only

# The same values as seen from inside @triton.jit code (module attributes: J.SRC_STATIC, ...).
SRC_NONE = tl.constexpr(SOURCE_NONE)
SRC_STATIC = tl.constexpr(SOURCE_STATIC)
SRC_DYNAMIC = tl.constexpr(SOURCE_DYNAMIC)
SRC_FALLBACK = tl.constexpr(SOURCE_FALLBACK)
SRC_STORE = tl.constexpr(SOURCE_STORE)
M_THRESHOLD = tl.constexpr(MODE_THRESHOLD)
M_LONGEST = tl.constexpr(MODE_LONGEST)
M_STATIC = tl.constexpr(MODE_STATIC)
NO_MATCH_DYN = tl.constexpr(-1)  # dyn_len standing for "no dynamic automaton"
NO_MATCH_STORE = tl.constexpr(-1)  # store_len standing for "no store"
# A store candidate's biased length when there is no store: below every real candidate (lengths are
# >= 0, biases < 2**30), so an absent store never wins and the two-source rule is unchanged.
NO_STORE_LEN: int = -(1 << 30)
NO_STORE_B = tl.constexpr(NO_STORE_LEN)

# Static edge labels may be uint16 (vocabularies of <= 65,536 ids; 2 bytes less per edge): the
# kernels widen each load to int32. Every other automaton array is int32.
EDGE_TOKEN_DTYPES = (torch.int32, torch.uint16)


def check_static_arrays(automaton, names, device: torch.device) -> None:
    """Each named array of a static automaton is 1-D on `device`, int32 (edge_token: int32 or
    uint16); a ValueError naming the array otherwise."""
    for name in names:
        t = getattr(automaton, name)
        dtypes = EDGE_TOKEN_DTYPES if name == "edge_token" else (torch.int32,)
        if t.dtype not in dtypes or t.ndim != 1 or t.device != device:
            want = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise ValueError(
                f"automaton.{name} must be a 1-D {want} tensor on {device}, got "
                f"{tuple(t.shape)} {t.dtype} on {t.device}"
            )


def check_automaton_arrays(
    holder, label: str, want: dict[str, tuple], device: torch.device, context: str
) -> None:
    """ValueError unless every array `name` of `holder` in `want` has that shape, is contiguous,
    int32 (the hash table: int64) and on `device`; the message names `label.name` and `context`
    (the shapes that defined the expected ones). The dynamic automata's and the store's launchers
    share it: their kernels address each array's rows at widths taken from one defining array."""
    for name, shape in want.items():
        t = getattr(holder, name)
        dtype = torch.int64 if name == "hash" else torch.int32
        if t.shape != shape or t.dtype != dtype or not t.is_contiguous() or t.device != device:
            raise ValueError(
                f"{label}.{name} {tuple(t.shape)} {t.dtype} on {t.device} must be {shape} "
                f"{dtype}, contiguous, on {device} ({context})"
            )


def check_chain_args(
    static, static_matches, dynamic, root, tree, source, chain_len, node_offset, store
) -> int:
    """sam_draft_chain's cheap argument checks (ValueError with the shapes); returns B."""
    b = root.shape[0]
    if static is None and dynamic is None and store is None:
        raise ValueError("sam_draft_chain needs a static automaton, a dynamic one, a store or more")
    if (static is None) != (static_matches is None):
        raise ValueError("pass static and static_matches together")
    tensors = [("root", root), ("tree.num_nodes", tree.num_nodes)]
    tensors += [("source", source), ("chain_len", chain_len)]
    if static_matches is not None:
        tensors += [("static_matches.state", static_matches.state)]
        tensors += [("static_matches.match_len", static_matches.match_len)]
    for name, t in tensors:
        if t is None:
            continue
        if t.shape != (b,) or t.dtype != torch.int32 or not t.is_contiguous():
            raise ValueError(
                f"{name} must be a contiguous [B={b}] int32 tensor (root {tuple(root.shape)}), "
                f"got {tuple(t.shape)} {t.dtype}"
            )
    for name in ("tokens", "parents"):
        t = getattr(tree, name)
        if t.ndim != 2 or t.shape[0] != b or t.dtype != torch.int32 or not t.is_contiguous():
            raise ValueError(
                f"tree.{name} must be a contiguous [B={b}, N] int32 tensor, got "
                f"{tuple(t.shape)} {t.dtype}"
            )
    if tree.parents.shape != tree.tokens.shape:
        raise ValueError(
            f"tree.tokens {tuple(tree.tokens.shape)} and tree.parents "
            f"{tuple(tree.parents.shape)} disagree"
        )
    if not 1 <= node_offset <= tree.tokens.shape[1]:
        raise ValueError(
            f"node_offset must lie in [1, N={tree.tokens.shape[1]}], got {node_offset}"
        )
    if dynamic is not None and dynamic.tokens.shape[0] < b:
        raise ValueError(f"batch of {b} but only {dynamic.tokens.shape[0]} dynamic slots")
    if store is not None and store.match_state.shape[1] < b:
        raise ValueError(f"batch of {b} but the store has {store.match_state.shape[1]} match rows")
    return b


@triton.jit
def csr_find(
    edge_offsets_ptr,  # [S+1] int32
    edge_token_ptr,  # [E] int32 or uint16 (EDGE_TOKEN_DTYPES), sorted within each state
    edge_dst_ptr,  # [E] int32
    state,  # scalar int32, not the root
    token,  # scalar int32
    BLOCK_E: tl.constexpr,
):
    """Transition of `state` on `token`, or -1 (NO_STATE). Binary search down to BLOCK_E edges, then
    one vector compare (tokens are unique within a state, so at most one lane matches)."""
    lo = tl.load(edge_offsets_ptr + state)
    hi = tl.load(edge_offsets_ptr + state + 1)
    while hi - lo > BLOCK_E:
        mid = (lo + hi) // 2
        t = tl.load(edge_token_ptr + mid).to(tl.int32)
        lo = tl.where(t < token, mid + 1, lo)
        hi = tl.where(t < token, hi, mid + 1)
    offs = lo + tl.arange(0, BLOCK_E)
    in_slice = offs < hi
    toks = tl.load(edge_token_ptr + offs, mask=in_slice, other=0).to(tl.int32)
    dsts = tl.load(edge_dst_ptr + offs, mask=in_slice, other=-1)
    return tl.max(tl.where(in_slice & (toks == token), dsts, -1), axis=0)


@triton.jit
def select_source(
    static_len,  # scalar int32 (0 without a static automaton)
    dyn_len,  # scalar int32 (-1 without a dynamic automaton: never chosen)
    mode,  # scalar int32, MODE_*
    l_bias,  # scalar int32
    l_threshold,  # scalar int32
    n_predicts,  # scalar int32, chain nodes including the root (threshold and forced modes)
    max_predicts,  # scalar int32, cap on chain nodes in MODE_LONGEST
    alpha,  # scalar fp32, MODE_LONGEST: nodes = min(max_predicts, 1 + floor(alpha * len))
    store_len,  # scalar int32 (-1 without a store or without a store continuation: never chosen)
    store_bias,  # scalar int32, subtracted from store_len before comparing
):
    """(source, nodes) by the rule of `select_source_py` (branch-free)."""
    biased = static_len - l_bias
    store_b = tl.where(store_len >= 0, store_len - store_bias, NO_STORE_B)
    use_dyn = (dyn_len >= biased) & (dyn_len >= store_b)
    use_store = (~use_dyn) & (store_b >= biased)
    best = tl.where(use_dyn, dyn_len, tl.where(use_store, store_b, biased))
    auto_src = tl.where(use_dyn, SRC_DYNAMIC, tl.where(use_store, SRC_STORE, SRC_STATIC))
    long_nodes = tl.minimum(
        max_predicts, 1 + (alpha * tl.maximum(best, 0).to(tl.float32)).to(tl.int32)
    )
    is_thr = mode == M_THRESHOLD
    is_long = mode == M_LONGEST
    is_static = mode == M_STATIC
    ok = tl.where(
        is_thr,
        best >= l_threshold,
        tl.where(is_long, best > 0, tl.where(is_static, static_len > 0, dyn_len > 0)),
    )
    chosen = tl.where(is_thr | is_long, auto_src, tl.where(is_static, SRC_STATIC, SRC_DYNAMIC))
    src = tl.where(ok, chosen, tl.where(is_thr, SRC_FALLBACK, SRC_NONE))
    nodes = tl.where(ok, tl.where(is_long, long_nodes, n_predicts), 1)
    return src, nodes


def select_source_py(
    static_len: int,
    dyn_len: int,
    mode: int,
    l_bias: int,
    l_threshold: int,
    n_predicts: int,
    max_predicts: int,
    alpha: float,
    store_len: int = -1,
    store_bias: int = 0,
) -> tuple[int, int]:
    """The selection rule (DESIGN.md §3, with the store as a third source), returning (source,
    chain nodes including the root).

    Candidates: dyn_len, store_len - store_bias (the cross-request store; store_len -1 when it is
    absent, and when its chain would be empty: sam_draft passes -1 then, so that the next-best
    source wins), static_len - l_bias. The winner is the largest, ties going to the dynamic
    automaton, then the store, then the static one (own text first, then this run's responses,
    then the corpus).
    - MODE_THRESHOLD (`sam+tr`, official `samd`): if the winner's (biased) length >= l_threshold,
      its chain of n_predicts nodes; otherwise SOURCE_FALLBACK.
    - MODE_LONGEST (`sam`, official `samd_sam_only`): the winner, no threshold, nodes =
      min(max_predicts, 1 + floor(alpha * winner's (biased) length)); SOURCE_NONE if it is <= 0.
    - MODE_STATIC / MODE_DYNAMIC: that automaton whenever it matches (len > 0), n_predicts nodes.
    Without a store the rule is the paper's two-source rule exactly.
    """
    biased = static_len - l_bias
    store_b = store_len - store_bias if store_len >= 0 else NO_STORE_LEN
    use_dyn = dyn_len >= biased and dyn_len >= store_b
    use_store = not use_dyn and store_b >= biased
    best = dyn_len if use_dyn else (store_b if use_store else biased)
    auto_src = SOURCE_DYNAMIC if use_dyn else (SOURCE_STORE if use_store else SOURCE_STATIC)
    if mode == MODE_THRESHOLD:
        return (auto_src, n_predicts) if best >= l_threshold else (SOURCE_FALLBACK, 1)
    if mode == MODE_LONGEST:
        if best <= 0:
            return SOURCE_NONE, 1
        # fp32 product truncated toward zero, as the kernel computes it
        scaled = int(torch.tensor(alpha, dtype=torch.float32) * best)
        return auto_src, min(max_predicts, 1 + scaled)
    if mode == MODE_STATIC:
        return (SOURCE_STATIC, n_predicts) if static_len > 0 else (SOURCE_NONE, 1)
    if mode == MODE_DYNAMIC:
        return (SOURCE_DYNAMIC, n_predicts) if dyn_len > 0 else (SOURCE_NONE, 1)
    raise ValueError(f"unknown selection mode {mode}")


def debug_check_new_tokens(new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """SAMGPU_DEBUG=1 only (syncs): 0 <= num_new <= K and no negative id among the tokens used."""
    k = new_tokens.shape[1]
    if bool(((num_new < 0) | (num_new > k)).any()):
        raise ValueError(f"num_new must lie in [0, K={k}], got {num_new.tolist()}")
    cols = torch.arange(k, device=new_tokens.device)
    live = cols[None, :] < num_new[:, None]
    if bool((live & (new_tokens < 0)).any()):
        raise ValueError("new_tokens holds a negative id (PAD_TOKEN?) before num_new")
