"""Count-ranked SAM tree: kernel vs reference on small corpora, plus the ranking it promises."""

import numpy as np
import pytest
import torch

from samgpu.automata import StaticAutomaton
from samgpu.kernels.sam_tree import FILL_TOKEN, NO_PARENT, sam_tree_ref, sam_tree_triton
from samgpu.sam import SamIndex

BACKENDS = [pytest.param(sam_tree_triton, id="triton"), pytest.param(sam_tree_ref, id="ref")]
EOS = 0


def _i32(x):
    return torch.tensor(x, dtype=torch.int32)


def _run(fn, index, states, lens, roots, N, device="cpu", **kw):
    """The index's arrays, inputs and out buffers on `device`; the outputs come back on the CPU."""
    auto = StaticAutomaton.from_index(index, device)
    B = len(states)
    tok = torch.full((B, N), 99, dtype=torch.int32, device=device)
    par = torch.full((B, N), 99, dtype=torch.int32, device=device)
    num = torch.zeros(B, dtype=torch.int32, device=device)
    state, match_len, root = (_i32(x).to(device) for x in (states, lens, roots))
    fn(auto, state, match_len, root, tok, par, num, **kw)
    return tok.cpu(), par.cpu(), num.cpu()


@pytest.mark.parametrize("fn", BACKENDS)
def test_golden_worked_example(fn, device):
    """Corpus "a b c" "a b d" "a b c" (EOS after each): after "a b", c occurs twice and d once;
    c is followed by EOS twice. Budget 4: [b, c, EOS, d], parents [-1, 0, 1, 0]. A sequence with
    match_len below min_match and one at the root get root-only trees."""
    a, b, c, d = 1, 2, 3, 4
    index = SamIndex.build([[a, b, c], [a, b, d], [a, b, c]], vocab_size=5, eos_id=EOS)
    s, L = index.match_state([a, b])
    assert L == 2 and int(index.count[s]) == 3
    tok, par, num = _run(fn, index, [s, s, 0], [L, L, 0], [b, b, 7], 4, device, min_match=2)
    F, P = FILL_TOKEN, NO_PARENT
    assert tok[0].tolist() == [b, c, EOS, d] and par[0].tolist() == [P, 0, 1, 0]
    assert num.tolist() == [4, 4, 1]
    tok, par, num = _run(fn, index, [s, 0], [1, 0], [b, 7], 4, device, min_match=2)
    assert tok.tolist() == [[b, F, F, F], [7, F, F, F]] and num.tolist() == [1, 1]
    assert par.tolist() == [[P] * 4] * 2


def _corpus(seed, vocab):
    g = np.random.default_rng(seed)
    return [g.integers(1, vocab, size=int(g.integers(3, 30))) for _ in range(12)]


@pytest.mark.parametrize("budget", [2, 9, 33])
@pytest.mark.parametrize("max_scan", [4096, 2])
def test_random_matches_reference_and_ranking(budget, max_scan, device):
    vocab = 5
    index = SamIndex.build(_corpus(budget, vocab), vocab_size=vocab, eos_id=EOS)
    g = np.random.default_rng(7)
    states, lens, roots = [], [], []
    for _ in range(3):
        q = g.integers(1, vocab, size=3).tolist()
        s, L = index.match_state(q)
        states.append(s)
        lens.append(L)
        roots.append(q[-1])
    got = _run(sam_tree_triton, index, states, lens, roots, budget, device, max_scan=max_scan)
    want = _run(sam_tree_ref, index, states, lens, roots, budget, device, max_scan=max_scan)
    for x, y in zip(got, want, strict=True):
        assert torch.equal(x, y)
    if max_scan < 4096:
        return
    tok, par, num = (t.tolist() for t in got)
    cnt = index.count.tolist()
    for r in range(3):
        # walk each node's path in the automaton: its count never exceeds its parent's, and every
        # child left out of the tree has a count <= the smallest count taken (exact top-N)
        node_state = [states[r]]
        for i in range(1, num[r]):
            assert 0 <= par[r][i] < i
            src = node_state[par[r][i]]
            lo, hi = int(index.edge_offsets[src]), int(index.edge_offsets[src + 1])
            toks = index.edge_token[lo:hi].tolist()
            dst = int(index.edge_dst[lo + toks.index(tok[r][i])])
            assert cnt[dst] <= cnt[src]
            node_state.append(dst)
        if num[r] == budget:
            taken = min(cnt[s] for s in node_state[1:]) if num[r] > 1 else 0
            for i, src in enumerate(node_state):
                lo, hi = int(index.edge_offsets[src]), int(index.edge_offsets[src + 1])
                used = {tok[r][j] for j in range(1, num[r]) if par[r][j] == i}
                for e in range(lo, hi):
                    if int(index.edge_token[e]) not in used:
                        assert cnt[int(index.edge_dst[e])] <= taken
