"""EAGLE-2 drafting on the device: the head's KV cache and the dynamic draft tree (the runtime of
`eagle`, `sam+eagle` and `merged+eagle`).

The head (parts/eagle_model.py): pair p = (embed(x[p+1]), f[p]) at position p -> g[p] ~ f[p+1],
lm_head(g[p]) drafts x[p+2] (f: the target's last hidden states, after its final norm). It runs
through samgpu's LlamaRunner on its one-layer model (`input_proj` = its fc), with a KV cache of
its own (one layer, capacity rows, like the target's).

Invariant between steps, per slot: head cache_len == the target's cache_len c; the head cache holds
the pairs 0..c-1, the last of which (c-1) is the root pair (embed(root), f[c-1]); its output g is
kept as `root_feat` (~ f[c], the target's hidden state at the root, which the target computes only
in the next step).
- start: a prompt of L tokens -> pairs 0..L-2 from the target's prefill hidden states
  (`new.hidden` = f[0..L-2]), one head prefill through a scratch cache copied into the slots;
  root_feat = g[L-2]. (L = 1: no pair yet; root_feat = 0, so the first drafts are noise: a wasted
  step, never a wrong output.)
- update (catch-up, inside the step's graph): a step emitted new_tokens[:num_new] after the accepted
  nodes a_0 (root) .. a_k; the pairs c+i = (embed(new_tokens[i]), step.hidden[a_i]), i < num_new,
  go through one head forward over the K emitted-token slots (causal chain; pad slots past num_new
  are written past the new length, never attended to); root_feat = g[num_new - 1] (rows that
  emitted nothing keep theirs); cache_len += num_new. Plain AR steps (K = 1) work the same way.
- propose (EAGLE-2's dynamic tree, `grow_tree` then `select_tree`): depth 1 = top-k of
  log_softmax(lm_head(root_feat)); for depth d = 1 .. D-1 the head expands the frontier (k nodes of
  depth d, pairs (embed(token), feature of its parent: root_feat at depth 1, else the parent's
  head output) at position c + d - 1), each node's top-k children (k*k candidates, scored by
  cumulative log-prob) join the candidates and the best k form the next frontier. Finally all
  candidates are ranked by score (a stable sort in creation order: a child never outscores its
  parent, since log-probs are <= 0, and ties go to the parent) and the best max_nodes - 1 form the
  tree, in rank order, which is topological.
Head-cache slots of the expansion: the frontier of depth d sits in slots (d-1)*k .. d*k-1 after the
cache (positions c + d - 1), each attending to cache[:c] and to its ancestors' slots (an ancestor
mask built as the frontiers are chosen). Each depth's forward runs over the slots [0, d*k) (the
earlier ones recomputed, identically), because the runner writes node i of a call at c + i: fixed
shapes per depth, no gather of the cache, k*D*(D-1)/2 head tokens per step (120 at k 8, D 6).

Example (k 2, D 3, 6 nodes): root top-2: a -0.1, b -2.5; a -> a1 -0.2, a2 -1.0 and b -> b1 -0.1,
b2 -0.3 give a1 -0.3, a2 -1.1, b1 -2.6, b2 -2.8; frontier [a1, a2]; a1 -> a11 -0.35, a12 -3.3 and
a2 -> a21 -1.6, a22 -1.7. Ranked: a, a1, a11, a2, a21 -> tokens [r, a, a1, a11, a2, a21], parents
[-1, 0, 1, 2, 1, 4].
Cost per step: one lm_head over root_feat, D-1 head forwards (+ k lm_head rows each) each followed
by one `eagle_expand` launch (kernels/eagle_expand.py: the children into the candidates, the next
frontier, its slots' tokens, hidden_in and ancestor rows; ~17 torch launches before), a sort over
k + (D-1)*k*k candidates; the catch-up: one head forward of K tokens. No host reads, fixed shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from samgpu.drafters.protocol import NewRequests
from samgpu.kernels.eagle_expand import (
    CandidateColumns,
    ExpansionSlots,
    FrontierBuffers,
    eagle_expand,
)
from samgpu.kernels.vocab_topk import vocab_topk
from samgpu.types import NO_PARENT, DecodeState, DraftTree, StepOutput

ROOT_CANDIDATE: int = -1  # parent of the depth-1 candidates: the tree's root
FILL_TOKEN: int = 0  # token of pad nodes (a valid id: the target embeds every node)


def num_candidates(topk: int, depth: int) -> int:
    """Candidates of a dynamic tree: k at depth 1, k*k per expansion of depths 1 .. D-1."""
    return 0 if topk == 0 or depth == 0 else topk + (depth - 1) * topk * topk


@dataclass
class Candidates:
    """Every node a dynamic tree may keep, in creation order (parents before children)."""

    tokens: torch.Tensor  # [B, C] int64
    scores: torch.Tensor  # [B, C] float32; cumulative log-prob
    parents: torch.Tensor  # [B, C] int64; candidate index of the parent, ROOT_CANDIDATE at depth 1
    node_of: torch.Tensor  # [B, C] int64 workspace: tree node of each candidate (0: not kept)

    @property
    def num(self) -> int:
        return self.tokens.shape[1]

    def rows(self, num_reqs: int) -> Candidates:
        return Candidates(*(t[:num_reqs] for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return self.tokens, self.scores, self.parents, self.node_of

    @staticmethod
    def empty(num_reqs: int, num: int, device) -> Candidates:
        def i64():
            return torch.zeros(num_reqs, num, dtype=torch.int64, device=device)

        scores = torch.zeros(num_reqs, num, dtype=torch.float32, device=device)
        return Candidates(i64(), scores, i64(), i64())


# (depth d, the depth-d frontier's candidate ids [B, k]) -> the best k children of each of its
# nodes (the head forward over expansion slots .. d*k): log-probs [B, k, k] float32, ids [B, k, k]
Expand = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def grow_tree(
    root_top: tuple[torch.Tensor, torch.Tensor],
    expand: Expand,
    cands: Candidates,
    fronts: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    slots: ExpansionSlots,
    *,
    topk: int,
    depth: int,
) -> None:
    """EAGLE-2's expansion (module doc) into `cands` (its first num_candidates(topk, depth)
    columns): root_top = the best k depth-1 tokens' log-probs [B, k] float32 and ids [B, k]. The
    depth-1 frontier goes to expansion slots 0 .. k (tokens; the caller sets their hidden_in and
    ancestor rows); then per depth `expand` scores the frontier's children and `eagle_expand`
    adds them to the candidates and writes the next frontier into the next k slots. `fronts`:
    two frontier buffers (scores [B, k] float32, candidate ids [B, k] int64), alternated."""
    k = topk
    scores, tokens = root_top
    B = scores.shape[0]
    scores = scores.clamp(max=0.0)
    cands.tokens[:, :k] = tokens
    cands.scores[:, :k] = scores
    cands.parents[:, :k] = ROOT_CANDIDATE
    front, other = fronts
    front[0].copy_(scores)
    front[1].copy_(torch.arange(k, device=scores.device).expand(B, k))
    if depth > 1:
        slots.tokens[:, :k] = tokens
    columns = CandidateColumns(cands.tokens, cands.scores, cands.parents)
    base = k
    for d in range(1, depth):
        child_lp, child_tok = expand(d, front[1])  # [B, k, k]
        step = FrontierBuffers(*front, *other)  # reads this frontier, writes the next
        eagle_expand(child_lp, child_tok, step, columns, base, slots, (d - 1) * k, d + 1 < depth)
        front, other = other, front
        base += k * k


def select_tree(root: torch.Tensor, cands: Candidates, tree: DraftTree) -> None:
    """The best tree.max_nodes - 1 candidates by score under the root, in rank order (a stable
    sort over creation order: parents rank before their children, so the order is topological);
    writes tree.tokens / parents / num_nodes. root [B] int32."""
    B, C = cands.tokens.shape
    M = min(tree.max_nodes - 1, C)
    tree.tokens[:, 0] = root
    tree.parents[:, 0] = NO_PARENT
    tree.tokens[:, M + 1 :] = FILL_TOKEN
    tree.parents[:, M + 1 :] = NO_PARENT
    tree.num_nodes.fill_(M + 1)
    if M == 0:
        return
    order = torch.sort(cands.scores, dim=1, descending=True, stable=True).indices[:, :M]
    rank = torch.arange(1, M + 1, device=order.device).expand(B, M)
    cands.node_of.zero_().scatter_(1, order, rank)
    parent = cands.parents.gather(1, order)
    # A parent that is not kept can only come from NaN scores: hang its child on the root (a
    # valid tree; verification keeps the output lossless whatever the draft).
    node = cands.node_of.gather(1, parent.clamp(min=0))
    tree.tokens[:, 1 : M + 1] = cands.tokens.gather(1, order)
    tree.parents[:, 1 : M + 1] = torch.where(parent == ROOT_CANDIDATE, 0, node)


class EagleDraft:
    """An EAGLE head's runtime for `max_reqs` slots: its runner and KV cache, the catch-up, the
    dynamic tree (module doc). `path_slots`: K of the engine's steps at most (the drafter's
    max_depth + 1), the catch-up's width. `max_nodes` caps the trees (root included); topk and
    depth shrink to fit it."""

    def __init__(
        self,
        head,
        *,
        max_reqs: int,
        max_len: int,
        max_nodes: int,
        topk: int,
        depth: int,
        path_slots: int,
    ):
        if topk < 1 or depth < 1:
            raise ValueError(f"EAGLE topk={topk} and depth={depth} must be >= 1")
        from samgpu.decoding.runners.llama import LlamaRunner

        self.head = head
        self.runner = runner = LlamaRunner(head.model, input_proj=head.fc)
        if topk > runner.vocab_size:
            raise ValueError(f"EAGLE topk={topk} exceeds the vocabulary ({runner.vocab_size})")
        # Small budgets (large batches) get a narrower, shallower expansion: its cost is paid
        # every step whatever the budget keeps (81 nodes: k 8, D 4; 16: k 4, D 4; 4: k 2, D 2).
        if max_nodes - 1 < 5 * topk:
            topk = min(topk, max(2, max_nodes // 4))
            depth = min(depth, max(2, max_nodes // topk))
        self.topk = k = min(topk, max_nodes - 1)
        self.depth = D = min(depth, max_nodes - 1) if k > 0 else 0
        self.num_candidates = num_candidates(k, D)
        self.max_nodes = 1 + min(max_nodes - 1, self.num_candidates)
        self.max_depth = D
        self.num_slots = T = max(D - 1, 0) * k  # expansion slots
        R, H, dev, dtype = max_reqs, runner.hidden_size, runner.device, runner.dtype
        self.path_slots = K = max(path_slots, D + 1)
        # the expansion writes at c .. c+T-1, the catch-up at c .. c+K-1
        self.cache = runner.allocate_cache(R, max_len + max(T, K))
        self.lm_head = runner.lm_head  # [V, H], the target's
        self.root_feat = torch.zeros(R, H, dtype=dtype, device=dev)
        self._cands = Candidates.empty(R, self.num_candidates, dev)
        # two frontier buffers (grow_tree alternates them): scores, candidate ids
        self._front_scores = [torch.zeros(R, k, dtype=torch.float32, device=dev) for _ in "ab"]
        self._front_cands = [torch.zeros(R, k, dtype=torch.int64, device=dev) for _ in "ab"]
        self._tokens = torch.zeros(R, T, dtype=torch.int64, device=dev)
        self._hidden_in = torch.zeros(R, T, H, dtype=dtype, device=dev)
        self._hidden_out = torch.zeros(R, max(T, K), H, dtype=dtype, device=dev)
        self._ancestors = torch.zeros(R, T, T, dtype=torch.bool, device=dev)
        self._slot_depth = torch.arange(T, device=dev) // max(k, 1)  # depth - 1 of each slot
        self._causal = torch.ones(K, K, dtype=torch.bool, device=dev).tril()
        self._eye = torch.eye(k, dtype=torch.bool, device=dev)
        self._steps = torch.arange(K, device=dev)

    # ------------------------------------------------------------------ lifecycle

    @torch.no_grad()
    def start(self, state: DecodeState, new: NewRequests) -> None:
        """The new slots' prompt pairs into the head cache; their root_feat and cache_len."""
        if new.hidden is None:
            raise ValueError(
                "EAGLE drafting needs the prompts' hidden states (NewRequests.hidden): the engine "
                "gives them to drafters with needs_hidden = True"
            )
        rows = new.rows
        pairs = (new.lengths.index_select(0, rows) - 1).clamp(min=0).to(torch.int32)  # L - 1
        width = new.hidden.shape[1]
        self.root_feat.index_fill_(0, rows, 0)
        if width > 0:
            n, runner = rows.numel(), self.runner
            ids = state.text.index_select(0, rows)[:, 1 : 1 + width].clamp(min=0)  # x[p+1]
            scratch = runner.allocate_cache(n, width)
            out = torch.zeros_like(new.hidden)
            runner.prefill(ids, pairs, scratch, hidden_in=new.hidden, hidden_out=out)
            for src, dst in ((scratch.k, self.cache.k), (scratch.v, self.cache.v)):
                dst[:, :, :, :width].index_copy_(1, rows, src[:, :n, :, :width])
            last = (pairs.long() - 1).clamp(min=0)[:, None, None].expand(-1, 1, out.shape[2])
            g = out.gather(1, last)[:, 0]
            self.root_feat.index_copy_(0, rows, torch.where((pairs > 0)[:, None], g, 0))
        self.cache.cache_len.index_copy_(0, rows, pairs)

    @torch.no_grad()
    def update(self, step: StepOutput) -> None:
        """Catch-up over the emitted tokens (module doc); graph-safe."""
        if step.hidden is None:
            raise ValueError("EAGLE drafting needs step.hidden (a drafter with needs_hidden)")
        B, K = step.new_tokens.shape
        if K > self.path_slots:
            raise ValueError(f"step of K={K} emitted tokens at most, above {self.path_slots}")
        H = self.root_feat.shape[1]
        cache_len = self.cache.cache_len[:B]
        nodes = step.accepted_nodes.clamp(min=0).long()[..., None].expand(B, K, H)
        hidden_in = step.hidden.gather(1, nodes)
        tokens = step.new_tokens.clamp(min=0)
        positions = cache_len[:, None] + self._steps[:K]
        mask = self._causal[:K, :K].expand(B, K, K)
        out = self._hidden_out[:B, :K]
        self.runner.forward_tree(
            tokens, positions, mask, self.cache, None, hidden_out=out, hidden_in=hidden_in
        )
        num_new = step.num_new
        last = (num_new.long() - 1).clamp(min=0)[:, None, None].expand(B, 1, H)
        g = out.gather(1, last)[:, 0]
        root_feat = self.root_feat[:B]
        root_feat.copy_(torch.where((num_new > 0)[:, None], g, root_feat))
        cache_len.add_(num_new)

    @torch.no_grad()
    def propose(self, root: torch.Tensor, tree: DraftTree) -> None:
        """The dynamic tree from root_feat into `tree` (root [B] int32: the committed roots)."""
        B = root.shape[0]
        cands = self._cands.rows(B)
        if self.num_candidates > 0:
            root_top = self._top_children(self.root_feat[:B])
            k, slots = self.topk, self._slots(B)
            if self.depth > 1:  # the depth-1 frontier's slots: inputs from the root, sees itself
                slots.hidden_in[:, :k] = self.root_feat[:B, None]
                slots.ancestors[:, :k] = False
                slots.ancestors[:, :k, :k].logical_or_(self._eye)
            fronts = ((self._front_scores[0][:B], self._front_cands[0][:B]),
                      (self._front_scores[1][:B], self._front_cands[1][:B]))  # fmt: skip
            expand = self._expander(B, slots)
            grow_tree(root_top, expand, cands, fronts, slots, topk=k, depth=self.depth)
        select_tree(root, cands, tree)

    # ------------------------------------------------------------------ pieces

    def _top_children(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most likely next tokens after each state g [..., H]: log-probs float32 and ids,
        [..., k]. (g made one contiguous matrix: cuBLAS picks a far slower kernel for a strided
        batch of rows at B=64.)"""
        lead, H = g.shape[:-1], g.shape[-1]
        vals, ids = vocab_topk(F.linear(g.reshape(-1, H), self.lm_head), self.topk)
        return vals.view(*lead, -1), ids.view(*lead, -1)

    def _slots(self, B: int) -> ExpansionSlots:
        return ExpansionSlots(
            self._tokens[:B], self._hidden_in[:B], self._hidden_out[:B], self._ancestors[:B]
        )

    def _expander(self, B: int, slots: ExpansionSlots) -> Expand:
        k = self.topk
        cache_len = self.cache.cache_len[:B]

        def expand(d: int, frontier_cands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            lo, hi = (d - 1) * k, d * k  # the depth-d frontier's slots (set by eagle_expand)
            positions = cache_len[:, None] + self._slot_depth[:hi]
            self.runner.forward_tree(
                slots.tokens[:, :hi],
                positions,
                slots.ancestors[:, :hi, :hi],
                self.cache,
                None,
                hidden_out=slots.hidden_out[:, :hi],
                hidden_in=slots.hidden_in[:, :hi],
            )
            return self._top_children(slots.hidden_out[:, lo:hi])

        return expand


__all__ = [
    "ROOT_CANDIDATE",
    "Candidates",
    "EagleDraft",
    "Expand",
    "grow_tree",
    "num_candidates",
    "select_tree",
]
