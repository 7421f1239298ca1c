"""tree_mask: parents -> ancestor mask, depth, positions. Golden literal masks first, then random
trees against the reference, Triton (interpreter on CPU) compared exactly."""

import pytest
import torch

from samgpu.kernels.tree import tree_mask, tree_mask_ref, tree_mask_triton
from samgpu.kernels.types import NO_PARENT

IMPLS = [pytest.param(tree_mask_triton, id="triton"), pytest.param(tree_mask_ref, id="ref")]
P = NO_PARENT


def _i32(x):
    return torch.tensor(x, dtype=torch.int32)


def _run(impl, parents, num_nodes, cache_len=None, device="cpu"):
    p = _i32(parents).to(device)
    n = _i32(num_nodes).to(device)
    c = None if cache_len is None else _i32(cache_len).to(device)
    out = impl(p, n, c)
    return out.mask.cpu().int(), out.depth.cpu(), None if c is None else out.positions.cpu()


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_small_tree(impl, device):
    """parents [-1,0,0,1] (root with children 1 and 2, 3 under 1), cache_len 7:
    depth [0,1,1,2], positions [7,8,8,9], mask rows {0} {0,1} {0,2} {0,1,3}."""
    mask, depth, pos = _run(impl, [[P, 0, 0, 1]], [4], [7], device)
    assert torch.equal(mask[0], _i32([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]))
    assert torch.equal(depth[0], _i32([0, 1, 1, 2]))
    assert torch.equal(pos[0], _i32([7, 8, 8, 9]))


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_chain_and_padding(impl, device):
    """A chain of 3 nodes padded to N=5 (pad rows hold only themselves, depth 0, position
    cache_len), next to a root-only tree (num_nodes 1: everything else is padding)."""
    mask, depth, pos = _run(impl, [[P, 0, 1, P, P], [P, P, P, P, P]], [3, 1], [0, 12], device)
    chain = _i32(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1],
        ]
    )
    assert torch.equal(mask[0], chain)
    assert torch.equal(mask[1], torch.eye(5, dtype=torch.int32))
    assert torch.equal(depth, _i32([[0, 1, 2, 0, 0], [0, 0, 0, 0, 0]]))
    assert torch.equal(pos, _i32([[0, 1, 2, 0, 0], [12, 12, 12, 12, 12]]))


@pytest.mark.parametrize("impl", IMPLS)
def test_pad_nodes_with_stale_parents_are_ignored(impl, device):
    """Nodes past num_nodes are padding even when their parents entry holds a stale index."""
    mask, depth, _ = _run(impl, [[P, 0, 1, 2]], [2], None, device)
    assert torch.equal(mask[0], _i32([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert torch.equal(depth[0], _i32([0, 1, 0, 0]))


def _random_tree(num_reqs, max_nodes, gen):
    parents = torch.full((num_reqs, max_nodes), P, dtype=torch.int32)
    num_nodes = torch.randint(1, max_nodes + 1, (num_reqs,), generator=gen, dtype=torch.int32)
    num_nodes[0] = max_nodes  # full-capacity tree
    for b in range(num_reqs):
        for i in range(1, max_nodes):
            parents[b, i] = int(torch.randint(0, i, (1,), generator=gen))
    return parents, num_nodes


@pytest.mark.parametrize("num_reqs,max_nodes", [(1, 1), (3, 7), (2, 33)])
def test_random_trees_triton_equals_ref(num_reqs, max_nodes, device):
    gen = torch.Generator().manual_seed(num_reqs * 100 + max_nodes)
    parents, num_nodes = _random_tree(num_reqs, max_nodes, gen)
    cache_len = torch.randint(0, 50, (num_reqs,), generator=gen, dtype=torch.int32)
    a = tree_mask_triton(parents.to(device), num_nodes.to(device), cache_len.to(device))
    b = tree_mask_ref(parents, num_nodes, cache_len)
    assert torch.equal(a.mask.cpu(), b.mask)
    assert torch.equal(a.depth.cpu(), b.depth)
    assert torch.equal(a.positions.cpu(), b.positions)
    # Independent check of the definition: walk parent pointers.
    for r in range(num_reqs):
        for i in range(int(num_nodes[r])):
            anc, j = set(), i
            while j != P:
                anc.add(j)
                j = int(parents[r, j])
            assert set(torch.nonzero(b.mask[r, i]).flatten().tolist()) == anc
            assert int(b.depth[r, i]) == len(anc) - 1


def test_out_buffers_are_reused_and_dispatch(device):
    parents, num_nodes = _i32([[P, 0, 0]]).to(device), _i32([3]).to(device)
    cache_len = _i32([4]).to(device)
    out = tree_mask_ref(parents, num_nodes, cache_len)
    out.mask.fill_(True)
    res = tree_mask(parents, num_nodes, cache_len, out=out)
    assert res is out
    assert torch.equal(out.mask[0].cpu().int(), _i32([[1, 0, 0], [1, 1, 0], [1, 0, 1]]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="num_nodes"):
        tree_mask_ref(_i32([[P, 0]]), _i32([2, 2]))
    with pytest.raises(ValueError, match="parents must be"):
        tree_mask_ref(_i32([P, 0]), _i32([2]))


@pytest.mark.parametrize("impl", [tree_mask_ref, tree_mask_triton])
def test_out_of_another_width_is_refused(impl, device):
    """An `out` narrower than the tree (the plain steps' N = 1 buffers under a drafted tree)
    would be written past its end by the kernel: refused. Control: the right width passes."""
    parents, num_nodes = _i32([[P, 0, 1]]).to(device), _i32([3]).to(device)
    cache_len = _i32([4]).to(device)
    narrow = tree_mask_ref(_i32([[P]]).to(device), _i32([1]).to(device), _i32([4]).to(device))
    with pytest.raises(ValueError, match="out.mask"):
        impl(parents, num_nodes, cache_len, out=narrow)
    right = tree_mask_ref(parents, num_nodes, cache_len)
    assert impl(parents, num_nodes, cache_len, out=right) is right


@pytest.mark.parametrize("max_nodes", [2, 16, 17, 40])
def test_full_chains_triton_equals_ref(max_nodes, device):
    """A chain is the deepest tree (N - 1 edges): the last row holds every node, depth N - 1."""
    parents = torch.arange(-1, max_nodes - 1, dtype=torch.int32)[None]
    num_nodes = _i32([max_nodes])
    a = tree_mask_triton(parents.to(device), num_nodes.to(device))
    b = tree_mask_ref(parents, num_nodes)
    assert torch.equal(a.mask.cpu(), b.mask) and torch.equal(a.depth.cpu(), b.depth)
    assert torch.equal(b.mask[0], torch.ones(max_nodes, max_nodes, dtype=torch.bool).tril())
    assert int(a.depth[0, -1]) == max_nodes - 1
