"""Fused select + chain draft: per sequence, pick the source (the selection rule below) and write
the chain `text[endpos + 1 : endpos + nodes]` of the chosen automaton straight into a DraftTree.

Selection rule (`SamSelectConfig.mode`, DESIGN.md §3; `_sam_jit.select_source` and its Python twin
`select_source_py`), from the static, dynamic and store match lengths:
- "threshold" (`sam+tr`, official `samd`): biased = static_len - l_bias; if max(dyn_len, biased) >=
  l_threshold: the dynamic automaton when dyn_len >= biased (ties go to the dynamic one), else the
  static one, n_predicts nodes (root included); otherwise SOURCE_FALLBACK (the auxiliary drafter).
- "longest" (`sam`, official `samd_sam_only`): the same winner without a threshold and
  nodes = min(max_predicts, 1 + floor(alpha * winner's length)) (static length biased); SOURCE_NONE
  when the winner's length is <= 0. `SamSelectConfig.sam_only()` gives the official script's values.
- "static" / "dynamic": that automaton whenever its match is non-empty, n_predicts nodes.
- the store (cross-request, kernels/sam_store.py) is a third candidate in "threshold" and
  "longest": its length is the longer of its two generations' matches (ties: the active one),
  less store_bias; the largest candidate wins, ties going to dynamic, then store, then static.
  The store is a candidate only when its chain has a first token (the match has length > 0 and
  its earliest occurrence ends neither a document nor the text): else the next-best automaton
  drafts by the same rule, where a cut store chain used to give the fallback (issue 16).
A missing static automaton counts as static_len 0 (the official NullStaticSAM), a missing dynamic
one or store is never chosen (without a store the rule is exactly the two-source one).
Example: static_len 12, dyn_len 6, l_bias 5, l_threshold 5 -> biased 7 > 6: SOURCE_STATIC, 40
nodes; static_len 8, dyn_len 3 -> max(3, 3) < 5: SOURCE_FALLBACK; with a store match of 7 as well
(store_bias 0): 7 = 7, the store before the static one: SOURCE_STORE; if that store match ends
a stored response (SEP next), the static one: SOURCE_STATIC.

Chain rule (official SAM-Decoding `gen_draft`, 0-based positions here):
- static: from the match state's earliest end position `endpos` in the corpus `tokens[T]`; no
  climbing (the official static draft skips `to_anc`). With `stop_at_eos` the chain ends at the
  index's EOS separator, which it includes: past it lies the next, unrelated document (the official
  code drafts through it, and pads with token 0 past the corpus end; both only waste nodes);
- store: from the match state's earliest end position in its generation's text, no climbing, cut
  before the document separator (SEP = V, which is never drafted) and at the text's end;
- dynamic: first, with `climb_dynamic`, climb suffix links (never to the root) while the earliest
  occurrence leaves fewer than `nodes` tokens after it, counted as the official `to_anc` does on a
  text without the current root: `text_len - 2 - endpos < nodes`; then take the sequence's own text
  (`tokens[b, :text_len]`, root included) from endpos + 1;
- at most `nodes - 1` draft tokens, and no more than the tree has room for after `node_offset`;
  a chain is cut at the end of its text, never padded with made-up tokens;
- an empty static or dynamic chain (or a zero-length match; or no room in the tree) turns the
  source into SOURCE_FALLBACK in "threshold" mode (the auxiliary drafter then fills the tree) and
  SOURCE_NONE otherwise.

Tree layout written (composable: a merged tree puts the chain first, other branches after it):
tokens[b, 0] = root[b], parents[b, 0] = NO_PARENT; chain node k (k = 0..n-1) at index
node_offset + k with parent 0 for k = 0, else node_offset + k - 1; indices past the chain up to the
tree width get token 0 and NO_PARENT (padding); num_nodes[b] = node_offset + n.
Also written: `source [B]`, `chain_len [B]` (= n).

Example (dynamic only, mode "dynamic", n_predicts 4): text "1 2 3 1 2" (root 2), match "1 2"
(length 2, earliest endpos 1). 5 - 2 - 1 = 2 < 4, but the state {"1 2", "2"} links to the root:
no climb. Chain = text[2:5] = "3 1 2" (nodes - 1 = 3 tokens) -> tree tokens [2, 3, 1, 2],
parents [-1, 0, 1, 2], num_nodes 4, source SOURCE_DYNAMIC. (Climbing example: text
"7 7 7 7 7": the match "7 7 7 7" first ends at 3, leaving 0 tokens; the climb goes "7 7 7",
"7 7", "7" (ending at 0), whose link is the root: chain "7 7 7".)

One program per sequence; the chain is gathered with one vector load of BLOCK_N tokens. No sync.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
import triton
import triton.language as tl

from samgpu.kernels import _sam_jit as J
from samgpu.kernels import sam_store_match as SM
from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels._sam_store_jit import check_arrays
from samgpu.kernels.sam_dynamic import check_slots
from samgpu.kernels.types import NO_PARENT, ROOT_STATE

MODES: dict[str, int] = {
    "threshold": J.MODE_THRESHOLD,
    "longest": J.MODE_LONGEST,
    "static": J.MODE_STATIC,
    "dynamic": J.MODE_DYNAMIC,
}

DYNAMIC_FIELDS = ("link", "endpos", "tokens", "text_len", "match_state", "match_len")  # d_*_ptr
PAD_NODE_TOKEN: int = 0  # token of pad nodes (a valid id: the runner embeds pad nodes too)
_NO_PARENT = tl.constexpr(NO_PARENT)
_ROOT = tl.constexpr(ROOT_STATE)


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
    store_bias: int = 0  # subtracted from the store match length before comparing

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {sorted(MODES)}")
        for name in ("l_bias", "l_threshold", "n_predicts", "max_predicts", "store_bias"):
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


def _check_args(static, static_matches, dynamic, root, tree, source, chain_len, offset, store):
    """check_chain_args, and the automata's arrays: the kernel reads their rows at widths taken
    from their tokens, so arrays of other shapes would be read past their ends (the extension
    launchers' checks, here too). Returns B."""
    args = (static, static_matches, dynamic, root, tree, source, chain_len, offset, store)
    b = J.check_chain_args(*args)
    if dynamic is not None:
        check_slots(dynamic, root.device)
    if store is not None:
        check_arrays(store, root.device)
    return b


@triton.jit(
    do_not_specialize=[
        "num_static_tokens", "eos_id", "mode", "l_bias", "l_threshold", "climb", "st_capacity",
        "st_max_reqs", "sep", "store_bias",
    ]
)  # fmt: skip
def _sam_draft_chain_kernel(
    s_endpos_ptr,  # [S] int32 static earliest end positions (read when HAS_STATIC)
    s_tokens_ptr,  # [T] int32 static corpus text (read when HAS_STATIC)
    s_state_ptr,  # [B] int32 static match state (read when HAS_STATIC)
    s_len_ptr,  # [B] int32 static match length (read when HAS_STATIC)
    d_link_ptr,  # [R, 2C] int32 (read when HAS_DYNAMIC; row b = sequence b)
    d_endpos_ptr,  # [R, 2C] int32
    d_tokens_ptr,  # [R, C] int32
    d_text_len_ptr,  # [R] int32
    d_state_ptr,  # [R] int32 dynamic match state
    d_len_ptr,  # [R] int32 dynamic match length
    st_endpos_ptr,  # [G, 2C'] int32 store earliest end positions (read when HAS_STORE)
    st_tokens_ptr,  # [G, C'] int32 store text
    st_text_len_ptr,  # [G] int32
    st_active_ptr,  # [1] int32
    st_state_ptr,  # [G, R] int32 store match states
    st_len_ptr,  # [G, R] int32 store match lengths
    root_ptr,  # [B] int32 last committed token
    tree_tokens_ptr,  # [B, N] int32 (out)
    tree_parents_ptr,  # [B, N] int32 (out)
    num_nodes_ptr,  # [B] int32 (out)
    source_ptr,  # [B] int32 (out)
    chain_len_ptr,  # [B] int32 (out)
    num_static_tokens,  # T
    eos_id,  # static chains stop after this token; -1: never
    capacity,  # C
    mode,
    l_bias,
    l_threshold,
    n_predicts,
    max_predicts,
    alpha,  # fp32
    climb,  # 1: climb dynamic suffix links (official to_anc), 0: not
    node_offset,  # tree index of the first chain node (>= 1)
    max_nodes,  # N
    st_capacity,  # C'
    st_max_reqs,  # R of the store's match rows
    sep,  # store document separator (= V)
    store_bias,
    HAS_STATIC: tl.constexpr,
    HAS_DYNAMIC: tl.constexpr,
    HAS_STORE: tl.constexpr,
    BLOCK_N: tl.constexpr,  # power of two >= N
):
    """One program per sequence."""
    b = tl.program_id(0).to(tl.int64)
    if HAS_STATIC:
        s_len = tl.load(s_len_ptr + b)
    else:
        s_len = tl.full([], 0, tl.int32)
    if HAS_DYNAMIC:
        d_len = tl.load(d_len_ptr + b)
    else:
        d_len = tl.full([], J.NO_MATCH_DYN, tl.int32)
    st_len = tl.full([], J.NO_MATCH_STORE, tl.int32)
    st_gen = tl.full([], 0, tl.int64)
    if HAS_STORE:
        st_len0 = tl.load(st_len_ptr + b)
        st_len1 = tl.load(st_len_ptr + st_max_reqs + b)
        st_act = tl.load(st_active_ptr)
        st_gen = tl.where(st_len1 > st_len0, 1, tl.where(st_len0 > st_len1, 0, st_act)).to(tl.int64)
        st_len = tl.maximum(st_len0, st_len1)
        st_state = tl.load(st_state_ptr + st_gen * st_max_reqs + b)
        st_ep = tl.load(st_endpos_ptr + st_gen * 2 * st_capacity.to(tl.int64) + st_state)
        st_end = tl.load(st_text_len_ptr + st_gen)
        st_base = st_tokens_ptr + st_gen * st_capacity
        st_next = tl.load(st_base + st_ep + 1, mask=(st_len > 0) & (st_ep + 1 < st_end), other=sep)
        # no continuation (the match ends a document or the text): no candidate, so the next-best
        # automaton drafts instead of the fallback
        st_len = tl.where(st_next != sep, st_len, J.NO_MATCH_STORE)
    src, nodes = J.select_source(
        s_len, d_len, mode, l_bias, l_threshold, n_predicts, max_predicts, alpha, st_len, store_bias
    )
    use_dyn = src == J.SRC_DYNAMIC
    use_static = src == J.SRC_STATIC
    use_store = src == J.SRC_STORE
    budget = tl.maximum(tl.minimum(nodes - 1, max_nodes - node_offset), 0)
    start = tl.full([], 0, tl.int64)
    end = tl.full([], 0, tl.int64)
    chosen_len = tl.full([], 0, tl.int32)
    if HAS_STATIC:
        s_state = tl.load(s_state_ptr + b)
        s_ep = tl.load(s_endpos_ptr + s_state)
        start = tl.where(use_static, s_ep.to(tl.int64) + 1, start)
        end = tl.where(use_static, num_static_tokens.to(tl.int64), end)
        chosen_len = tl.where(use_static, s_len, chosen_len)
    if HAS_DYNAMIC:
        row = b * 2 * capacity.to(tl.int64)
        d = tl.load(d_state_ptr + b)
        text_len = tl.load(d_text_len_ptr + b)
        ep = tl.load(d_endpos_ptr + row + d)
        lk = tl.load(d_link_ptr + row + d)
        going = use_dyn & (climb != 0) & (d != _ROOT) & (lk != _ROOT) & (text_len - 2 - ep < nodes)
        while going:
            d = lk
            ep = tl.load(d_endpos_ptr + row + d)
            lk = tl.load(d_link_ptr + row + d)
            going = (lk != _ROOT) & (text_len - 2 - ep < nodes)
        start = tl.where(use_dyn, ep.to(tl.int64) + 1, start)
        end = tl.where(use_dyn, text_len.to(tl.int64), end)
        chosen_len = tl.where(use_dyn, d_len, chosen_len)
    if HAS_STORE:
        start = tl.where(use_store, st_ep.to(tl.int64) + 1, start)
        end = tl.where(use_store, st_end.to(tl.int64), end)
        chosen_len = tl.where(use_store, st_len, chosen_len)
    offs = tl.arange(0, BLOCK_N)
    avail = tl.minimum(tl.maximum(end - start, 0), budget.to(tl.int64)).to(tl.int32)
    avail = tl.where(chosen_len > 0, avail, 0)
    toks = tl.zeros([BLOCK_N], dtype=tl.int32)
    # (scalar-bool & vector-bool masks trip the interpreter: fold the source into the bound)
    if HAS_STATIC:
        s_want = offs < tl.where(use_static, avail, 0)
        s_toks = tl.load(s_tokens_ptr + start + offs, mask=s_want, other=0)
        toks = tl.where(s_want, s_toks, toks)
        first_eos = tl.min(tl.where(s_want & (s_toks == eos_id), offs, BLOCK_N), axis=0)
        avail = tl.minimum(avail, first_eos + 1)
    if HAS_DYNAMIC:
        d_want = offs < tl.where(use_dyn, avail, 0)
        d_toks = tl.load(d_tokens_ptr + b * capacity + start + offs, mask=d_want, other=0)
        toks = tl.where(d_want, d_toks, toks)
    if HAS_STORE:
        st_want = offs < tl.where(use_store, avail, 0)
        st_toks = tl.load(st_base + start + offs, mask=st_want, other=0)
        toks = tl.where(st_want, st_toks, toks)
        avail = tl.minimum(avail, tl.min(tl.where(st_want & (st_toks == sep), offs, BLOCK_N), 0))
    chain = offs < avail
    empty_src = tl.where(mode == J.M_THRESHOLD, J.SRC_FALLBACK, J.SRC_NONE)
    src = tl.where((avail == 0) & (use_dyn | use_static | use_store), empty_src, src)
    node = node_offset + offs
    in_tree = node < max_nodes
    parent = tl.where(offs == 0, 0, node - 1)
    tl.store(tree_tokens_ptr + b * max_nodes + node, tl.where(chain, toks, 0), mask=in_tree)
    tl.store(
        tree_parents_ptr + b * max_nodes + node, tl.where(chain, parent, _NO_PARENT), mask=in_tree
    )
    tl.store(tree_tokens_ptr + b * max_nodes, tl.load(root_ptr + b))
    tl.store(tree_parents_ptr + b * max_nodes, _NO_PARENT)
    tl.store(num_nodes_ptr + b, node_offset + avail)
    tl.store(source_ptr + b, src)
    tl.store(chain_len_ptr + b, avail)


def _alloc(b: int, device, source, chain_len):
    if source is None:
        source = torch.empty(b, dtype=torch.int32, device=device)
    if chain_len is None:
        chain_len = torch.empty(b, dtype=torch.int32, device=device)
    return source, chain_len


def sam_draft_chain_triton(
    static,
    static_matches,
    dynamic,
    root: torch.Tensor,
    tree,
    config: SamSelectConfig,
    *,
    node_offset: int = 1,
    source: torch.Tensor | None = None,
    chain_len: torch.Tensor | None = None,
    store=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select and write the chain into `tree` (DraftTree) in place; returns (source, chain_len) [B].

    static: object with `endpos [S]`, `tokens [T]`, `eos_id` (StaticAutomaton) or None;
    static_matches: object with `state`, `match_len` [B] or None; dynamic: DynamicAutomata-like
    (`length`, `link`, `endpos`, `tokens`, `text_len`, `match_state`, `match_len`) or None;
    store: StoreAutomaton-like (`endpos`, `tokens`, `text_len`, `active`, `match_state`,
    `match_len`, `vocab_size`) or None.
    """
    args = (static, static_matches, dynamic, root, tree, source, chain_len, node_offset, store)
    b = _check_args(*args)
    source, chain_len = _alloc(b, root.device, source, chain_len)
    if b == 0:
        return source, chain_len
    max_nodes = tree.tokens.shape[1]
    dummy = root
    has_s, has_d, has_st = static is not None, dynamic is not None, store is not None
    st_names = ("endpos", "tokens", "text_len", "active", "match_state", "match_len")
    _sam_draft_chain_kernel[(b,)](
        static.endpos if has_s else dummy,
        static.tokens if has_s else dummy,
        static_matches.state if has_s else dummy,
        static_matches.match_len if has_s else dummy,
        *(getattr(dynamic, n) if has_d else dummy for n in DYNAMIC_FIELDS),
        *(getattr(store, n) if has_st else dummy for n in st_names),
        root,
        tree.tokens,
        tree.parents,
        tree.num_nodes,
        source,
        chain_len,
        static.tokens.shape[0] if has_s else 0,
        static.eos_id if has_s and config.stop_at_eos else -1,
        dynamic.tokens.shape[1] if has_d else 0,
        config.mode_id,
        config.l_bias,
        config.l_threshold,
        config.n_predicts,
        config.max_predicts,
        float(config.alpha),
        int(config.climb_dynamic),
        node_offset,
        max_nodes,
        store.tokens.shape[1] if has_st else 0,
        store.match_state.shape[1] if has_st else 0,
        store.vocab_size if has_st else -1,
        config.store_bias,
        HAS_STATIC=has_s,
        HAS_DYNAMIC=has_d,
        HAS_STORE=has_st,
        BLOCK_N=triton.next_power_of_2(max_nodes),
        num_warps=1,
    )
    return source, chain_len


def _store_pick_ref(store, i: int) -> tuple[int, int, int]:
    """(generation, earliest end position, match length) of sequence i's longer store match (ties:
    the active one); length NO_MATCH_STORE (-1, no candidate) when it has no continuation."""
    lens = [int(store.match_len[g, i]) for g in range(SM.NUM_GENERATIONS)]
    gen = int(store.active[0]) if lens[0] == lens[1] else int(lens[1] > lens[0])
    ep = int(store.endpos[gen, int(store.match_state[gen, i])])
    has_next = lens[gen] > 0 and ep + 1 < int(store.text_len[gen])
    if not has_next or int(store.tokens[gen, ep + 1]) == store.vocab_size:
        return gen, ep, -1
    return gen, ep, lens[gen]


def sam_draft_chain_ref(
    static,
    static_matches,
    dynamic,
    root: torch.Tensor,
    tree,
    config: SamSelectConfig,
    *,
    node_offset: int = 1,
    source: torch.Tensor | None = None,
    chain_len: torch.Tensor | None = None,
    store=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop-level reference of `sam_draft_chain_triton` (same arguments and effects).

    Memory traffic per sequence: ~6 int32 scalars (+7 with a store) + 2 per climb step, the
    chain's tokens, and 2 x 4 x N bytes of tree writes.
    """
    args = (static, static_matches, dynamic, root, tree, source, chain_len, node_offset, store)
    b = _check_args(*args)
    source, chain_len = _alloc(b, root.device, source, chain_len)
    max_nodes = tree.tokens.shape[1]
    eos = static.eos_id if static is not None and config.stop_at_eos else -1
    for i in range(b):
        s_len = int(static_matches.match_len[i]) if static is not None else 0
        d_len = int(dynamic.match_len[i]) if dynamic is not None else -1
        gen, st_ep, st_len = _store_pick_ref(store, i) if store is not None else (0, 0, -1)
        c = config
        src, nodes = J.select_source_py(
            s_len, d_len, c.mode_id, c.l_bias, c.l_threshold, c.n_predicts, c.max_predicts,
            c.alpha, st_len, c.store_bias,
        )  # fmt: skip
        budget = max(min(nodes - 1, max_nodes - node_offset), 0)
        chain: list[int] = []
        if src == J.SOURCE_STATIC and s_len > 0:
            ep = int(static.endpos[int(static_matches.state[i])])
            chain = static.tokens[ep + 1 : ep + 1 + budget].tolist()
            if eos in chain:
                chain = chain[: chain.index(eos) + 1]
        elif src == J.SOURCE_DYNAMIC and d_len > 0:
            d = int(dynamic.match_state[i])
            text_len = int(dynamic.text_len[i])
            ep = int(dynamic.endpos[i, d])
            if config.climb_dynamic and d != ROOT_STATE:
                while int(dynamic.link[i, d]) != ROOT_STATE and text_len - 2 - ep < nodes:
                    d = int(dynamic.link[i, d])
                    ep = int(dynamic.endpos[i, d])
            chain = dynamic.tokens[i, ep + 1 : min(ep + 1 + budget, text_len)].tolist()
        elif src == J.SOURCE_STORE and st_len > 0:
            stop = min(st_ep + 1 + budget, int(store.text_len[gen]))
            chain = store.tokens[gen, st_ep + 1 : stop].tolist()
            if store.vocab_size in chain:
                chain = chain[: chain.index(store.vocab_size)]
        if not chain and src in (J.SOURCE_STATIC, J.SOURCE_DYNAMIC, J.SOURCE_STORE):
            src = J.SOURCE_FALLBACK if config.mode_id == J.MODE_THRESHOLD else J.SOURCE_NONE
        n = len(chain)
        tree.tokens[i, 0] = root[i]
        tree.parents[i, 0] = NO_PARENT
        for k in range(max_nodes - node_offset):
            node = node_offset + k
            if k < n:
                tree.tokens[i, node] = chain[k]
                tree.parents[i, node] = 0 if k == 0 else node - 1
            else:
                tree.tokens[i, node] = PAD_NODE_TOKEN
                tree.parents[i, node] = NO_PARENT
        tree.num_nodes[i] = node_offset + n
        source[i] = src
        chain_len[i] = n
    return source, chain_len


def sam_draft_chain(
    static,
    static_matches,
    dynamic,
    root: torch.Tensor,
    tree,
    config: SamSelectConfig,
    *,
    node_offset: int = 1,
    source: torch.Tensor | None = None,
    chain_len: torch.Tensor | None = None,
    store=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select + chain draft into `tree` (Triton on CUDA tensors, the reference otherwise)."""
    impl = sam_draft_chain_triton if use_triton(root) else sam_draft_chain_ref
    return impl(
        static,
        static_matches,
        dynamic,
        root,
        tree,
        config,
        node_offset=node_offset,
        source=source,
        chain_len=chain_len,
        store=store,
    )


_PTRS = ("s_endpos", "s_tokens", "s_state", "s_len", "d_link", "d_endpos", "d_tokens")
_PTRS += ("d_text_len", "d_state", "d_len", "st_endpos", "st_tokens", "st_text_len", "st_active")
_PTRS += ("st_state", "st_len", "root", "tree_tokens", "tree_parents", "num_nodes", "source")
_INTS = ("num_static_tokens", "eos_id", "capacity", "mode", "l_bias", "l_threshold", "n_predicts")
_SIG = {
    **{f"{n}_ptr": "*i32" for n in (*_PTRS, "chain_len")},
    **{n: "i32" for n in (*_INTS, "max_predicts")},
    "alpha": "fp32",
    **{n: "i32" for n in ("climb", "node_offset", "max_nodes", "st_capacity", "st_max_reqs")},
    **{n: "i32" for n in ("sep", "store_bias")},
    **{n: "constexpr" for n in ("HAS_STATIC", "HAS_DYNAMIC", "HAS_STORE", "BLOCK_N")},
}
AOT_SPECS = [
    AotSpec(
        _sam_draft_chain_kernel,
        _SIG,
        {"HAS_STATIC": hs, "HAS_DYNAMIC": hd, "HAS_STORE": st, "BLOCK_N": n},
        num_warps=1,
    )
    for hs, hd, st in itertools.product((True, False), repeat=3)
    if hs or hd or st
    for n in (64, 128)
]
