"""Static suffix-automaton match: advance every sequence's (state, match_len) over its new tokens.

The static automaton (built offline, shared by the whole batch) is a flattened suffix automaton
(DESIGN.md §3): `length[S]`, `link[S]`, transitions in CSR (`edge_offsets[S+1]` with a leading
0, `edge_token[E]` sorted within each state, `edge_dst[E]`) and a dense `root_next[V]` row for the
root. Per sequence the decoder keeps a match `(state, match_len)`: the longest suffix of its
committed text that occurs in the corpus is `match_len` tokens long and belongs to `state`.

Rule, for each new token c (the official SAM-Decoding `transfer_state`):
- while the state has no transition on c and is not the root: state = link[state],
  match_len = min(match_len, length[state]) (= length[state] in a valid automaton, where
  length[link[s]] < match_len <= length[s]; the min keeps a loaded index whose links pass the
  structural checks but point elsewhere from reporting a match longer than the text consumed);
- the root looks c up in `root_next` (with the vocabulary singletons it has every token);
- take the transition and add 1, or, if even the root has none, fall to (root, 0).
Transitions of non-root states are found by binary search in the state's CSR slice, narrowed to at
most BLOCK_E edges, which are then compared in one vector load (most states have 1-2 edges, so one
memory round trip usually decides).

Inputs per step: `new_tokens [B, K]` PAD_TOKEN-padded, `num_new [B]` (tokens to consume; 0 leaves
the match unchanged). `state [B]`, `match_len [B]` are updated in place. One program per sequence,
sequential over its tokens; O(K x (climbs + log deg)) scalar loads.

Example: corpus "1 2 3 EOS 1 2 4 EOS" (plus singletons). From the root, tokens 1 2 -> match_len 2
(state of "1 2", earliest end position 1); then 4 -> "1 2 4" exists -> match_len 3; then 3 ->
no "1 2 4 3" or "2 4 3" or "4 3": climb to the root, "3" exists -> match_len 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels import _sam_jit as J
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import debug_checks, use_triton
from samgpu.kernels.types import NO_STATE, ROOT_STATE

BLOCK_E: int = 16  # CSR slices up to this many edges are scanned with one vector load
_NO_STATE = tl.constexpr(NO_STATE)  # the sentinels as seen from inside @triton.jit code
_ROOT = tl.constexpr(ROOT_STATE)


@triton.jit
def static_advance_seq(
    b,  # sequence index, int64
    edge_offsets_ptr,  # [S+1] int32
    edge_token_ptr,  # [E] int32 or uint16
    edge_dst_ptr,  # [E] int32
    length_ptr,  # [S] int32
    link_ptr,  # [S] int32
    root_next_ptr,  # [V] int32, _NO_STATE where the root has no edge
    new_tokens_ptr,  # [B, K] int32, PAD_TOKEN past num_new
    num_new_ptr,  # [B] int32
    state_ptr,  # [B] int32 (in/out)
    match_len_ptr,  # [B] int32 (in/out)
    vocab_size,  # V
    stride_new_b,  # row stride of new_tokens
    BLOCK_E: tl.constexpr,
):
    """Advance sequence b's match over its new tokens, in order (the body of the kernel below,
    shared with the fused sam_update kernel)."""
    state = tl.load(state_ptr + b)
    match_len = tl.load(match_len_ptr + b)
    num_new = tl.load(num_new_ptr + b)
    for i in range(0, num_new):
        token = tl.load(new_tokens_ptr + b * stride_new_b + i)
        in_vocab = (token >= 0) & (token < vocab_size)
        nxt = tl.full([], _NO_STATE, tl.int32)
        # the suffix link (and its length) go out with the edge search of the same state, so a
        # climb costs the search's round trips only
        lk = tl.load(link_ptr + state, mask=state != _ROOT, other=_ROOT)
        lk_len = tl.load(length_ptr + lk)
        searching = 1
        while searching == 1:
            if state == _ROOT:
                nxt = tl.load(root_next_ptr + token, mask=in_vocab, other=_NO_STATE)
                searching = 0
            else:
                nxt = J.csr_find(
                    edge_offsets_ptr, edge_token_ptr, edge_dst_ptr, state, token, BLOCK_E
                )
                if nxt == _NO_STATE:
                    state = lk
                    match_len = tl.minimum(match_len, lk_len)
                    lk = tl.load(link_ptr + state, mask=state != _ROOT, other=_ROOT)
                    lk_len = tl.load(length_ptr + lk)
                else:
                    searching = 0
        state = tl.where(nxt == _NO_STATE, _ROOT, nxt)
        match_len = tl.where(nxt == _NO_STATE, 0, match_len + 1)
    # (no write without new tokens: another stream may be restarting this row's match, as in
    # kernels/sam_dynamic.py)
    tl.store(state_ptr + b, state, mask=num_new > 0)
    tl.store(match_len_ptr + b, match_len, mask=num_new > 0)


@triton.jit(do_not_specialize=["vocab_size", "stride_new_b"])
def _sam_match_advance_kernel(
    edge_offsets_ptr,  # [S+1] int32
    edge_token_ptr,  # [E] int32 or uint16
    edge_dst_ptr,  # [E] int32
    length_ptr,  # [S] int32
    link_ptr,  # [S] int32
    root_next_ptr,  # [V] int32, NO_STATE where the root has no edge
    new_tokens_ptr,  # [B, K] int32, PAD_TOKEN past num_new
    num_new_ptr,  # [B] int32
    state_ptr,  # [B] int32 (in/out)
    match_len_ptr,  # [B] int32 (in/out)
    vocab_size,  # V
    stride_new_b,  # row stride of new_tokens
    BLOCK_E: tl.constexpr,
):
    """One program per sequence; tokens consumed in order."""
    static_advance_seq(
        tl.program_id(0).to(tl.int64),
        edge_offsets_ptr,
        edge_token_ptr,
        edge_dst_ptr,
        length_ptr,
        link_ptr,
        root_next_ptr,
        new_tokens_ptr,
        num_new_ptr,
        state_ptr,
        match_len_ptr,
        vocab_size,
        stride_new_b,
        BLOCK_E,
    )


def _check(automaton, new_tokens, num_new, state, match_len) -> None:
    names = ("edge_offsets", "edge_token", "edge_dst", "length", "link", "root_next")
    J.check_static_arrays(automaton, names, new_tokens.device)
    if new_tokens.ndim != 2 or new_tokens.dtype != torch.int32:
        raise ValueError(
            f"new_tokens must be [B, K] int32, got {tuple(new_tokens.shape)} {new_tokens.dtype}"
        )
    if new_tokens.stride(1) != 1:
        raise ValueError("new_tokens must have unit stride along K")
    b = new_tokens.shape[0]
    for name, t in (("num_new", num_new), ("state", state), ("match_len", match_len)):
        if t.shape != (b,) or t.dtype != torch.int32 or not t.is_contiguous():
            raise ValueError(
                f"{name} must be a contiguous [B] int32 tensor with B={b} (new_tokens "
                f"{tuple(new_tokens.shape)}), got {tuple(t.shape)} {t.dtype}"
            )
    if debug_checks():
        J.debug_check_new_tokens(new_tokens, num_new)


def sam_match_triton(
    automaton,
    new_tokens: torch.Tensor,
    num_new: torch.Tensor,
    state: torch.Tensor,
    match_len: torch.Tensor,
) -> None:
    """Advance (state, match_len) [B] in place over new_tokens[b, :num_new[b]].

    `automaton` has int32 tensors `edge_offsets, edge_token, edge_dst, length, link, root_next`
    (edge_token may be uint16; e.g. `samgpu.automata.StaticAutomaton`). No host sync; capturable
    in a CUDA graph.
    """
    _check(automaton, new_tokens, num_new, state, match_len)
    num_reqs = new_tokens.shape[0]
    if num_reqs == 0:
        return
    _sam_match_advance_kernel[(num_reqs,)](
        automaton.edge_offsets,
        automaton.edge_token,
        automaton.edge_dst,
        automaton.length,
        automaton.link,
        automaton.root_next,
        new_tokens,
        num_new,
        state,
        match_len,
        automaton.root_next.shape[0],
        new_tokens.stride(0),
        BLOCK_E=BLOCK_E,
        num_warps=1,  # scalar walk: more warps would only repeat it
    )


def _csr_find_ref(automaton, state: int, token: int) -> int:
    lo = int(automaton.edge_offsets[state])
    hi = int(automaton.edge_offsets[state + 1])
    for k in range(lo, hi):
        if int(automaton.edge_token[k]) == token:
            return int(automaton.edge_dst[k])
    return NO_STATE


def sam_match_ref(
    automaton,
    new_tokens: torch.Tensor,
    num_new: torch.Tensor,
    state: torch.Tensor,
    match_len: torch.Tensor,
) -> None:
    """Loop-level reference of `sam_match_triton` (same arguments, same in-place result).

    Memory traffic per token: 2 offsets + log2(deg) tokens + 1 dst per visited state, plus
    1 link + 1 length per climb (all int32, scattered).
    """
    _check(automaton, new_tokens, num_new, state, match_len)
    vocab_size = automaton.root_next.shape[0]
    for b in range(new_tokens.shape[0]):
        s = int(state[b])
        length = int(match_len[b])
        for i in range(int(num_new[b])):
            token = int(new_tokens[b, i])
            while True:
                if s == ROOT_STATE:
                    nxt = int(automaton.root_next[token]) if 0 <= token < vocab_size else NO_STATE
                    break
                nxt = _csr_find_ref(automaton, s, token)
                if nxt != NO_STATE:
                    break
                s = int(automaton.link[s])
                length = min(length, int(automaton.length[s]))
            if nxt == NO_STATE:
                s, length = ROOT_STATE, 0
            else:
                s, length = nxt, length + 1
        state[b] = s
        match_len[b] = length


def sam_match(
    automaton,
    new_tokens: torch.Tensor,
    num_new: torch.Tensor,
    state: torch.Tensor,
    match_len: torch.Tensor,
) -> None:
    """Advance the static matches in place (Triton on CUDA tensors, the reference otherwise)."""
    if use_triton(new_tokens):
        sam_match_triton(automaton, new_tokens, num_new, state, match_len)
    else:
        sam_match_ref(automaton, new_tokens, num_new, state, match_len)


AOT_SPECS = [
    AotSpec(
        _sam_match_advance_kernel,
        {
            "edge_offsets_ptr": "*i32",
            "edge_token_ptr": edge_sig,
            "edge_dst_ptr": "*i32",
            "length_ptr": "*i32",
            "link_ptr": "*i32",
            "root_next_ptr": "*i32",
            "new_tokens_ptr": "*i32",
            "num_new_ptr": "*i32",
            "state_ptr": "*i32",
            "match_len_ptr": "*i32",
            "vocab_size": "i32",
            "stride_new_b": "i32",
            "BLOCK_E": "constexpr",
        },
        {"BLOCK_E": BLOCK_E},
        num_warps=1,
    )
    for edge_sig in ("*i32", "*u16")
]
