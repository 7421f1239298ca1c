"""Trie merge of two draft trees: kernel vs reference, and the properties the verifier relies on:
topological order, budget respected, no two siblings with the same token, A kept first, every
surviving root path of either input present in the output."""

import pytest
import torch

from samgpu.kernels.merge_tree import FILL_TOKEN, NO_PARENT, merge_tree_ref, merge_tree_triton

BACKENDS = [pytest.param(merge_tree_triton, id="triton"), pytest.param(merge_tree_ref, id="ref")]


def _i32(x):
    return torch.tensor(x, dtype=torch.int32)


def _run(fn, a, ap, na, b, bp, nb, N, device="cpu"):
    """Inputs and out buffers on `device`; the outputs come back on the CPU."""
    a, ap, na, b, bp, nb = (t.to(device) for t in (a, ap, na, b, bp, nb))
    R = a.shape[0]
    tok = torch.full((R, N), 99, dtype=torch.int32, device=device)
    par = torch.full((R, N), 99, dtype=torch.int32, device=device)
    num = torch.zeros(R, dtype=torch.int32, device=device)
    fn(a, ap, na, b, bp, nb, tok, par, num)
    return tok.cpu(), par.cpu(), num.cpu()


@pytest.mark.parametrize("fn", BACKENDS)
def test_golden_chain_plus_tree(fn, device):
    """A = chain [r x y]; B = [r x z w], parents [-1 0 0 1]: x merges into A's x, z goes under the
    root, w under x -> [r x y z w], parents [-1 0 1 0 1]. With a budget of 4, w is dropped."""
    a, ap = _i32([[7, 1, 2]]), _i32([[-1, 0, 1]])
    b, bp = _i32([[7, 1, 3, 4]]), _i32([[-1, 0, 0, 1]])
    tok, par, num = _run(fn, a, ap, _i32([3]), b, bp, _i32([4]), 6, device)
    assert tok.tolist() == [[7, 1, 2, 3, 4, FILL_TOKEN]]
    assert par.tolist() == [[-1, 0, 1, 0, 1, NO_PARENT]] and num.tolist() == [5]
    tok, par, num = _run(fn, a, ap, _i32([3]), b, bp, _i32([4]), 4, device)
    assert (
        tok.tolist() == [[7, 1, 2, 3]] and par.tolist() == [[-1, 0, 1, 0]] and num.tolist() == [4]
    )


@pytest.mark.parametrize("fn", BACKENDS)
def test_duplicate_siblings_and_dropped_subtrees(fn, device):
    """Row 0: A is root only; B's two children of the root carry the same token 5, so the second
    one and its child 6 fold into the first: [r 5 6]. Row 1: budget 2 drops B's node 2 (token 8)
    and with it its child (token 9), which must not attach anywhere."""
    a, ap = _i32([[4, 0], [4, 0]]), _i32([[-1, -1], [-1, -1]])
    b = _i32([[4, 5, 5, 6], [4, 7, 8, 9]])
    bp = _i32([[-1, 0, 0, 2], [-1, 0, 0, 2]])
    tok, par, num = _run(fn, a, ap, _i32([1, 1]), b, bp, _i32([4, 4]), 3, device)
    assert tok.tolist() == [[4, 5, 6], [4, 7, 8]]
    assert par.tolist() == [[-1, 0, 1], [-1, 0, 0]] and num.tolist() == [3, 3]
    tok, par, num = _run(fn, a, ap, _i32([1, 1]), b, bp, _i32([4, 4]), 2, device)
    assert tok.tolist() == [[4, 5], [4, 7]] and num.tolist() == [2, 2]


def _random_tree(g, R, T, vocab):
    tok = torch.randint(0, vocab, (R, T), generator=g, dtype=torch.int32)
    par = torch.full((R, T), NO_PARENT, dtype=torch.int32)
    for i in range(1, T):
        par[:, i] = torch.randint(0, i, (R,), generator=g, dtype=torch.int32)
    tok[:, 0] = 0
    return tok, par


def _paths(tok, par, n):
    out = set()
    for i in range(n):
        p, j = [], i
        while j > 0:
            p.append(tok[j])
            j = par[j]
        out.add(tuple(reversed(p)))
    return out


@pytest.mark.parametrize("num_reqs", [1, 3])
@pytest.mark.parametrize("budget", [1, 7, 64])
def test_random_matches_reference_and_properties(num_reqs, budget, device):
    g = torch.Generator().manual_seed(budget * 10 + num_reqs)
    chain_len = torch.randint(1, 6, (num_reqs,), generator=g, dtype=torch.int32)
    a = torch.randint(0, 3, (num_reqs, 6), generator=g, dtype=torch.int32)
    a[:, 0] = 0
    ap = (torch.arange(6, dtype=torch.int32) - 1).expand(num_reqs, 6).contiguous()
    b, bp = _random_tree(g, num_reqs, 40, vocab=3)  # vocab 3: many duplicate siblings
    nb = torch.randint(0, 41, (num_reqs,), generator=g, dtype=torch.int32)
    got = _run(merge_tree_triton, a, ap, chain_len, b, bp, nb, budget, device)
    want = _run(merge_tree_ref, a, ap, chain_len, b, bp, nb, budget, device)
    for x, y in zip(got, want, strict=True):
        assert torch.equal(x, y)
    tok, par, num = (t.tolist() for t in got)
    for r in range(num_reqs):
        n = num[r]
        assert 1 <= n <= budget
        assert par[r][0] == NO_PARENT and all(0 <= par[r][i] < i for i in range(1, n))
        sibs = [(par[r][i], tok[r][i]) for i in range(1, n)]
        assert len(sibs) == len(set(sibs)), "duplicate siblings"
        na = min(int(chain_len[r]), budget)
        assert tok[r][:na] == a[r, :na].tolist(), "A is kept first, unchanged"
        if budget == 64:  # nothing dropped: the output's paths are exactly the union of paths
            union = _paths(a[r].tolist(), ap[r].tolist(), int(chain_len[r]))
            union |= _paths(b[r].tolist(), bp[r].tolist(), max(1, int(nb[r])))
            assert _paths(tok[r], par[r], n) == union
