"""EAGLE-2's dynamic tree (samgpu/drafters/parts/eagle_draft.py: grow_tree + select_tree) against a
plain-Python reference, with the head replaced by fixed log-prob tables per root path: the worked
example of the module docstring, random tables (integer outputs compared exactly), degenerate
distributions (ties), and a negative control (ranking by a node's own log-prob instead of the
cumulative one gives another tree on the same tables)."""

from __future__ import annotations

import random

import pytest
import torch

from samgpu.drafters.parts.eagle_draft import (
    ROOT_CANDIDATE,
    Candidates,
    grow_tree,
    num_candidates,
    select_tree,
)
from samgpu.kernels.eagle_expand import ExpansionSlots
from samgpu.types import NO_PARENT, DraftTree


class Tables:
    """Log-prob rows per root path (tuple of tokens; () = the root), random unless given."""

    def __init__(self, vocab: int, seed: int, given: dict | None = None, default=None):
        self.vocab, self.seed, self.rows = vocab, seed, {}
        self.default = None if default is None else torch.tensor(default, dtype=torch.float32)
        for path, row in (given or {}).items():
            self.rows[path] = torch.tensor(row, dtype=torch.float32)

    def __call__(self, path: tuple[int, ...]) -> torch.Tensor:
        if path not in self.rows and self.default is not None:
            return self.default
        if path not in self.rows:
            g = torch.Generator().manual_seed(hash((self.seed, path)) % (1 << 62))
            logits = 3 * torch.randn(self.vocab, generator=g)
            self.rows[path] = logits.log_softmax(-1)
        return self.rows[path]


def run_tensor(tables: list[Tables], roots: list[int], k: int, depth: int, max_nodes: int):
    """grow_tree + select_tree over a batch, the head replaced by `tables` (one per row): the
    frontier's root paths are read back from the candidates' parent links."""
    B = len(tables)
    cands = Candidates.empty(B, num_candidates(k, depth), "cpu")

    def path(b: int, c: int) -> tuple[int, ...]:
        out = []
        while c != ROOT_CANDIDATE:
            out.append(int(cands.tokens[b, c]))
            c = int(cands.parents[b, c])
        return tuple(reversed(out))

    def expand(d: int, frontier_cands: torch.Tensor):
        paths = [[path(b, int(c)) for c in frontier_cands[b]] for b in range(B)]
        logp = torch.stack([torch.stack([tables[b](p) for p in paths[b]]) for b in range(B)])
        return logp.topk(k, dim=-1)

    T = max(depth - 1, 0) * k
    slots = ExpansionSlots(  # the head's inputs are not used here: one feature each
        torch.zeros(B, T, dtype=torch.int64),
        torch.zeros(B, T, 1),
        torch.zeros(B, T, 1),
        torch.zeros(B, T, T, dtype=torch.bool),
    )
    fronts = tuple((torch.zeros(B, k), torch.zeros(B, k, dtype=torch.int64)) for _ in range(2))
    root_logp = torch.stack([t(()) for t in tables])
    grow_tree(root_logp.topk(k, dim=-1), expand, cands, fronts, slots, topk=k, depth=depth)
    tree = DraftTree.empty(B, max_nodes, "cpu")
    select_tree(torch.tensor(roots, dtype=torch.int32), cands, tree)
    return tree


def reference_tree(
    table: Tables, root: int, k: int, depth: int, max_nodes: int, *, cumulative=True
):
    """EAGLE-2 in plain Python (float32 scores). cumulative=False: the negative control."""

    def top(row: torch.Tensor) -> list[int]:
        vals = row.tolist()
        return sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:k]

    tokens, scores, parents, own = [], [], [], []  # candidates in creation order
    frontier = []  # (candidate, path)
    row = table(())
    for t in top(row):
        tokens.append(t), scores.append(row[t]), parents.append(-1), own.append(row[t])
        frontier.append((len(tokens) - 1, (t,)))
    for _ in range(1, depth):
        children = []
        for c, path in frontier:
            row = table(path)
            for t in top(row):
                tokens.append(t), scores.append(scores[c] + row[t]), parents.append(c)
                own.append(row[t])
                children.append((len(tokens) - 1, path + (t,)))
        key = scores if cumulative else own
        frontier = sorted(children, key=lambda ch: (-float(key[ch[0]]), ch[0]))[:k]
    key = scores if cumulative else own
    keep = sorted(range(len(tokens)), key=lambda i: (-float(key[i]), i))[: max_nodes - 1]
    node = {c: i + 1 for i, c in enumerate(keep)}
    out_tokens = [root] + [tokens[c] for c in keep]
    out_parents = [NO_PARENT] + [0 if parents[c] < 0 else node.get(parents[c], 0) for c in keep]
    return out_tokens, out_parents


def as_lists(tree: DraftTree, b: int) -> tuple[list[int], list[int]]:
    n = int(tree.num_nodes[b])
    return tree.tokens[b, :n].tolist(), tree.parents[b, :n].tolist()


def check_valid(tree: DraftTree) -> None:
    """Topological, every node's parent kept, no two siblings with one token, pads filled."""
    for b in range(tree.tokens.shape[0]):
        toks, pars = as_lists(tree, b)
        assert pars[0] == NO_PARENT
        assert all(0 <= p < i for i, p in enumerate(pars) if i > 0)
        pairs = list(zip(pars[1:], toks[1:], strict=True))
        assert len(set(pairs)) == len(pairs)
        n = len(toks)
        assert (tree.parents[b, n:] == NO_PARENT).all()


def test_worked_example():
    """The module docstring's example: k 2, D 3, 6 nodes."""
    a, b, a1, a2, b1, b2, a11, a12, a21, a22, vocab, r = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0

    def row(**lp):
        out = [-10.0] * vocab
        for name, v in lp.items():
            out[locals_[name]] = v
        return out

    locals_ = dict(a=a, b=b, a1=a1, a2=a2, b1=b1, b2=b2, a11=a11, a12=a12, a21=a21, a22=a22)
    table = Tables(
        vocab,
        0,
        {
            (): row(a=-0.1, b=-2.5),
            (a,): row(a1=-0.2, a2=-1.0),
            (b,): row(b1=-0.1, b2=-0.3),
            (a, a1): row(a11=-0.05, a12=-3.0),
            (a, a2): row(a21=-0.5, a22=-0.6),
        },
    )
    tree = run_tensor([table], [r], 2, 3, 6)
    assert as_lists(tree, 0) == ([r, a, a1, a11, a2, a21], [-1, 0, 1, 2, 1, 4])
    assert reference_tree(table, r, 2, 3, 6) == as_lists(tree, 0)


@pytest.mark.parametrize(
    "k,depth,max_nodes",
    [(1, 1, 2), (3, 1, 8), (2, 4, 7), (4, 3, 81), (8, 6, 81), (5, 5, 200)],
    ids=["k1d1", "depth1-wide", "small", "budget-above-candidates", "eagle2-defaults", "all"],
)
def test_matches_reference(k, depth, max_nodes):
    B, vocab = 3, 40
    tables = [Tables(vocab, seed=100 * k + 10 * depth + b) for b in range(B)]
    roots = [random.Random(b).randrange(vocab) for b in range(B)]
    tree = run_tensor(tables, roots, k, depth, max_nodes)
    check_valid(tree)
    total = min(max_nodes, 1 + num_candidates(k, depth))
    assert tree.num_nodes.tolist() == [total] * B
    for b in range(B):
        assert as_lists(tree, b) == reference_tree(tables[b], roots[b], k, depth, max_nodes)


def test_negative_control_own_log_prob_ranking_differs():
    """Ranking candidates by their own log-prob (not the path's) is a different tree: the
    comparison above can fail."""
    k, depth, max_nodes, vocab = 4, 4, 30, 40
    tables = [Tables(vocab, seed=s) for s in range(3)]
    tree = run_tensor(tables, [0, 0, 0], k, depth, max_nodes)
    differs = [
        as_lists(tree, b) != reference_tree(tables[b], 0, k, depth, max_nodes, cumulative=False)
        for b in range(3)
    ]
    assert all(differs)


def test_degenerate_distributions_keep_parents_first():
    """One-hot rows (log-probs 0 and -inf): children tie with their parents and -inf ties
    -inf; the tree stays valid and every certain child follows its parent."""
    vocab = 6
    table = Tables(vocab, 0, default=[0.0] + [float("-inf")] * (vocab - 1))
    tree = run_tensor([table], [3], 2, 4, 12)
    check_valid(tree)
    toks, pars = as_lists(tree, 0)
    # the certain chain 0, 0, 0, 0 comes first (score 0), each under the one before
    assert toks[:5] == [3, 0, 0, 0, 0] and pars[:5] == [-1, 0, 1, 2, 3]


def test_root_only_budget():
    """max_nodes 1: no candidate kept, the root alone."""
    tables = [Tables(10, 0)]
    tree = run_tensor(tables, [7], 2, 2, 1)
    assert as_lists(tree, 0) == ([7], [-1])
