"""Token Recycling kernels vs references: adjacency update (last writer wins) and template fill."""

import pytest
import torch

from samgpu.kernels.token_recycling import (
    FILL_TOKEN,
    NO_CLAIM,
    NO_PARENT,
    token_recycling_fill_ref,
    token_recycling_fill_triton,
    token_recycling_update_ref,
    token_recycling_update_triton,
)

UPDATE = [
    pytest.param(token_recycling_update_triton, id="triton"),
    pytest.param(token_recycling_update_ref, id="ref"),
]
FILL = [
    pytest.param(token_recycling_fill_triton, id="triton"),
    pytest.param(token_recycling_fill_ref, id="ref"),
]


def _i32(x, device="cpu"):
    return torch.tensor(x, dtype=torch.int32, device=device)


@pytest.mark.parametrize("fn", UPDATE)
def test_update_golden(fn, device):
    """Sequence 0 verifies tokens [1 2 1], sequence 1 [2 3 4] of which only 2 nodes are valid.
    Token 1 twice in row 0: the later node (i=2) wins; token 2 in both rows: row 1 wins (larger
    flat index); token 4 is past num_valid, so row 4 keeps its old value.
    The scratch is released."""
    adj = torch.full((6, 2), 7, dtype=torch.int32, device=device)
    # node (b, i) -> [2(3b+i), 2(3b+i)+1]
    topk = torch.arange(12, dtype=torch.int32, device=device).view(2, 3, 2)
    winner = torch.full((6,), NO_CLAIM, dtype=torch.int32, device=device)
    fn(adj, _i32([[1, 2, 1], [2, 3, 4]], device), topk, _i32([3, 2], device), winner)
    assert adj.tolist() == [[7, 7], [4, 5], [6, 7], [8, 9], [7, 7], [7, 7]]
    assert winner.tolist() == [NO_CLAIM] * 6


@pytest.mark.parametrize("num_reqs", [1, 3, 8])
@pytest.mark.parametrize("max_nodes", [1, 7, 64])
def test_update_random_matches_reference(num_reqs, max_nodes, device):
    """Few distinct tokens make collisions within and across sequences the common case."""
    V, K = 13, 8
    tokens = torch.randint(0, V, (num_reqs, max_nodes), dtype=torch.int32)
    topk = torch.randint(0, 1000, (num_reqs, max_nodes, K), dtype=torch.int32)
    num_valid = torch.randint(0, max_nodes + 1, (num_reqs,), dtype=torch.int32)
    adj0 = torch.randint(0, 1000, (V, K), dtype=torch.int32)
    winner = torch.full((V,), NO_CLAIM, dtype=torch.int32)
    tokens, topk, num_valid, adj0, winner = (
        t.to(device) for t in (tokens, topk, num_valid, adj0, winner)
    )
    got = token_recycling_update_triton(adj0.clone(), tokens, topk, num_valid, winner)
    want = token_recycling_update_ref(adj0.clone(), tokens, topk, num_valid)
    assert torch.equal(got, want)
    assert winner.tolist() == [NO_CLAIM] * V


@pytest.mark.parametrize("fn", FILL)
def test_fill_golden(fn, device):
    """adj[5] = [6, 7], adj[6] = [8, 9]; template paths [], [0], [1], [0, 0] from root 5
    -> tokens [5, 6, 7, 8]; from root 6 -> [6, 8, 9, 0] (adj[8] is all zeros)."""
    adj = torch.zeros(10, 2, dtype=torch.int32)
    adj[5] = _i32([6, 7])
    adj[6] = _i32([8, 9])
    paths = _i32([[-1, -1], [0, -1], [1, -1], [0, 0]])
    depth = _i32([0, 1, 1, 2])
    tpl_par = _i32([-1, 0, 0, 1])
    adj, paths, depth, tpl_par = (t.to(device) for t in (adj, paths, depth, tpl_par))
    tok = torch.full((2, 5), 99, dtype=torch.int32, device=device)
    par = torch.full((2, 5), 99, dtype=torch.int32, device=device)
    num = torch.zeros(2, dtype=torch.int32, device=device)
    fn(adj, _i32([5, 6], device), paths, depth, tpl_par, tok, par, num)
    F, P = FILL_TOKEN, NO_PARENT
    assert tok.tolist() == [[5, 6, 7, 8, F], [6, 8, 9, 0, F]]
    assert par.tolist() == [[P, 0, 0, 1, P]] * 2
    assert num.tolist() == [4, 4]


@pytest.mark.parametrize("num_reqs", [1, 3])
def test_fill_full_template_matches_reference(num_reqs, device):
    from samgpu.drafters.parts.recycling import template_tree

    V = 40
    adj = torch.randint(0, V, (V, 8), dtype=torch.int32).to(device)
    paths, depth, tpl_par = template_tree().tensors(device)
    root = torch.randint(0, V, (num_reqs,), dtype=torch.int32).to(device)
    outs = []
    for fn in (token_recycling_fill_triton, token_recycling_fill_ref):
        tok = torch.zeros(num_reqs, 83, dtype=torch.int32, device=device)
        par = torch.zeros_like(tok)
        num = torch.zeros(num_reqs, dtype=torch.int32, device=device)
        fn(adj, root, paths, depth, tpl_par, tok, par, num)
        outs.append((tok, par, num))
    for g, w in zip(*outs, strict=True):
        assert torch.equal(g, w)
