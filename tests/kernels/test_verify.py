"""verify_greedy / verify_sample: golden literal trees first, then random trees, Triton (interpreter
on CPU) against the reference with exact integer equality. The statistical (distribution) tests of
sampling live in tests/decoding/test_sampling.py."""

import pytest
import torch

from samgpu.kernels.verify import (
    NO_PARENT,
    sampling_probs,
    verify_greedy,
    verify_greedy_ref,
    verify_greedy_triton,
    verify_sample_ref,
    verify_sample_triton,
)

P = NO_PARENT
GREEDY = [
    pytest.param(verify_greedy_triton, id="triton"),
    pytest.param(verify_greedy_ref, id="ref"),
]
SAMPLE = [
    pytest.param(verify_sample_triton, id="triton"),
    pytest.param(verify_sample_ref, id="ref"),
]
V = 16


def _i32(x, device="cpu"):
    return torch.tensor(x, dtype=torch.int32, device=device)


def _logits_with_argmax(argmax_rows, vocab=V):
    """logits [B, N, V] whose argmax after node i of row b is argmax_rows[b][i]."""
    logits = torch.randn(len(argmax_rows), len(argmax_rows[0]), vocab)
    for b, row in enumerate(argmax_rows):
        for i, t in enumerate(row):
            logits[b, i, t] = 10.0
    return logits


def _greedy(impl, argmax_rows, tokens, parents, max_depth, device):
    logits = _logits_with_argmax(argmax_rows).to(device)
    num_nodes = [len(t) for t in tokens]
    width = len(argmax_rows[0])
    toks = [t + [0] * (width - len(t)) for t in tokens]
    pars = [p + [P] * (width - len(p)) for p in parents]
    out = impl(
        logits, _i32(toks, device), _i32(pars, device), _i32(num_nodes, device), max_depth=max_depth
    )
    return out.accepted_nodes.cpu().tolist(), out.num_accepted.cpu().tolist(), out.bonus.tolist()


@pytest.mark.parametrize("impl", GREEDY)
def test_greedy_vocabulary_example(impl, device):
    """types.py: tokens [C, D, E, X], parents [-1, 0, 1, 0]; argmax after C is D, after D is E,
    after E is F -> accepted [0, 1, 2], num_accepted 2, bonus F."""
    C, D, E, X, F = 1, 2, 3, 4, 5
    acc, num, bonus = _greedy(
        impl, [[D, E, F, 0]], [[C, D, E, X]], [[P, 0, 1, 0]], max_depth=3, device=device
    )
    assert acc == [[0, 1, 2, P]] and num == [2] and bonus == [F]


@pytest.mark.parametrize("impl", GREEDY)
def test_greedy_edge_cases_in_one_batch(impl, device):
    """Row 0: root-only tree -> bonus = argmax after the root.
    Row 1: first-token rejection (children 4, 5 but argmax 6) -> bonus 6.
    Row 2: fully accepted chain 4 -> 5 -> 9 down to the leaf at depth max_depth -> bonus = argmax
           at the leaf (10).
    Row 3: the matching child is the later sibling (node 2, token 7), its sibling node 1 is wrong;
           then node 3 (token 8, child of 2) matches -> accepted [0, 2, 3], bonus 11.
    Row 4: siblings repeat token 7 (nodes 1 and 2) -> the lowest index (1) is taken; node 1 has no
           children -> bonus is argmax after node 1 (12)."""
    argmax = [
        [3, 0, 0, 0],
        [6, 0, 0, 0],
        [4, 5, 9, 10],
        [7, 0, 8, 11],
        [7, 12, 13, 0],
    ]
    tokens = [[1], [1, 4, 5], [2, 4, 5, 9], [1, 6, 7, 8], [1, 7, 7]]
    parents = [[P], [P, 0, 0], [P, 0, 1, 2], [P, 0, 0, 2], [P, 0, 0]]
    acc, num, bonus = _greedy(impl, argmax, tokens, parents, max_depth=3, device=device)
    assert acc == [[0, P, P, P], [0, P, P, P], [0, 1, 2, 3], [0, 2, 3, P], [0, 1, P, P]]
    assert num == [0, 0, 3, 2, 1]
    assert bonus == [3, 6, 10, 11, 12]


@pytest.mark.parametrize("impl", GREEDY)
def test_greedy_depth_limit(impl, device):
    """A chain deeper than max_depth is accepted only down to depth max_depth; the bonus is the
    argmax at the last accepted node."""
    acc, num, bonus = _greedy(
        impl, [[2, 3, 4, 5]], [[1, 2, 3, 4]], [[P, 0, 1, 2]], max_depth=2, device=device
    )
    assert acc == [[0, 1, 2]] and num == [2] and bonus == [4]


@pytest.mark.parametrize("impl", GREEDY)
def test_greedy_argmax_ties_take_first(impl, device):
    """Equal logits for tokens 3 and 5: the argmax is 3 (torch.argmax's first maximum), so child
    token 5 is rejected and the bonus is 3."""
    logits = torch.zeros(1, 2, V, device=device)
    logits[0, 0, 3] = logits[0, 0, 5] = 1.0
    out = impl(
        logits, _i32([[1, 5]], device), _i32([[P, 0]], device), _i32([2], device), max_depth=1
    )
    assert out.num_accepted.tolist() == [0] and out.bonus.tolist() == [3]


def _random_tree(num_reqs, max_nodes, gen):
    parents = torch.full((num_reqs, max_nodes), P, dtype=torch.int32)
    num_nodes = torch.randint(1, max_nodes + 1, (num_reqs,), generator=gen, dtype=torch.int32)
    num_nodes[0] = max_nodes
    for b in range(num_reqs):
        for i in range(1, max_nodes):
            # bias towards deep trees: mostly the previous node or a recent one
            parents[b, i] = max(0, i - 1 - int(torch.randint(0, 3, (1,), generator=gen)))
    tokens = torch.randint(0, 6, (num_reqs, max_nodes), generator=gen, dtype=torch.int32)
    return tokens, parents, num_nodes


@pytest.mark.parametrize("num_reqs,max_nodes,max_depth", [(1, 1, 0), (3, 9, 4), (4, 33, 32)])
def test_greedy_random_triton_equals_ref(num_reqs, max_nodes, max_depth, device):
    gen = torch.Generator().manual_seed(max_nodes)
    tokens, parents, num_nodes = _random_tree(num_reqs, max_nodes, gen)
    # Small vocabulary so that argmax often matches a child and paths get deep.
    logits = torch.randn(num_reqs, max_nodes, 6, generator=gen)
    args = (tokens.to(device), parents.to(device), num_nodes.to(device))
    a = verify_greedy_triton(logits.to(device), *args, max_depth=max_depth)
    b = verify_greedy_ref(logits, tokens, parents, num_nodes, max_depth=max_depth)
    assert torch.equal(a.accepted_nodes.cpu(), b.accepted_nodes)
    assert torch.equal(a.num_accepted.cpu(), b.num_accepted)
    assert torch.equal(a.bonus.cpu(), b.bonus)
    assert torch.equal(
        verify_greedy(logits, tokens, parents, num_nodes, max_depth=max_depth).bonus, b.bonus
    )


def _sample(impl, probs, tokens, parents, max_depth, device, seed=5, keys=None):
    """verify_sample on literal trees; positions are cache_len 10 + depth."""
    num_nodes = [len(t) for t in tokens]
    width = probs.shape[1]
    toks = [t + [0] * (width - len(t)) for t in tokens]
    pars = [p + [P] * (width - len(p)) for p in parents]
    depth = [[0] * width for _ in tokens]
    for b, row in enumerate(pars):
        for i in range(1, num_nodes[b]):
            depth[b][i] = depth[b][row[i]] + 1
    keys = list(range(len(tokens))) if keys is None else keys
    out = impl(
        probs.clone().to(device),
        _i32(toks, device),
        _i32(pars, device),
        _i32(num_nodes, device),
        torch.tensor([seed], dtype=torch.int64, device=device),
        torch.tensor(keys, dtype=torch.int64, device=device),
        _i32([[10 + d for d in row] for row in depth], device),
        max_depth=max_depth,
    )
    return out.accepted_nodes.cpu().tolist(), out.num_accepted.cpu().tolist(), out.bonus.tolist()


@pytest.mark.parametrize("impl", SAMPLE)
@pytest.mark.parametrize("seed", [0, 7, -(2**62)])
def test_sample_certain_chain_and_impossible_child(impl, seed, device):
    """Row 0: a chain whose tokens have probability 1 is accepted whatever the noise; the bonus is
    the leaf's certain token 5. Row 1: the root's children have tokens of probability 0 (4) and
    a duplicate pair of the certain token 6: nothing draws a zero-probability token, and of two
    siblings with the drawn token the first is taken."""
    probs = torch.zeros(2, 4, V)
    probs[0, 0, 3] = probs[0, 1, 4] = probs[0, 2, 5] = 1.0
    probs[0, 3, 1] = 1.0
    probs[1, 0, 6] = 1.0
    probs[1, 2, 9] = 1.0
    acc, num, bonus = _sample(
        impl, probs, [[1, 3, 4], [1, 4, 6, 6]], [[P, 0, 1], [P, 0, 0, 0]], 3, device, seed=seed
    )
    assert acc == [[0, 1, 2, P], [0, 2, P, P]] and num == [2, 1] and bonus == [5, 9]


@pytest.mark.parametrize("impl", SAMPLE)
def test_sample_depends_on_seed_and_key_not_on_row(impl, device):
    """Flat distributions: the tokens drawn are a function of (seed, key, position). The same key
    in another row of the batch draws the same; another key or seed draws otherwise (over 3
    rows of 64 tokens a coincidence is negligible)."""
    probs = torch.full((3, 1, 64), 1 / 64)
    tree = ([[1]] * 3, [[P]] * 3, 0, device)
    bonus = _sample(impl, probs, *tree, keys=[4, 9, 4])[2]
    assert bonus[0] == bonus[2]
    assert _sample(impl, probs, *tree, keys=[9, 4, 11])[2][:2] == [bonus[1], bonus[0]]
    assert _sample(impl, probs, *tree, keys=[4, 9, 4], seed=6)[2] != bonus
    assert _sample(impl, probs, *tree, keys=[5, 10, 3])[2] != bonus


@pytest.mark.parametrize("num_reqs,max_nodes,max_depth,vocab", [(3, 9, 4, 12), (5, 20, 19, 1500)])
def test_sample_random_triton_equals_ref(num_reqs, max_nodes, max_depth, vocab, device):
    """Random trees, peaked distributions (so that acceptance happens), random keys and
    positions; vocab 1500 spans two BLOCK_V blocks of the race. Exact equality of the walk, and
    of the kernel's race winners with the reference's where the reference raced."""
    gen = torch.Generator().manual_seed(vocab)
    tokens, parents, num_nodes = _random_tree(num_reqs, max_nodes, gen)
    logits = 3.0 * torch.randn(num_reqs, max_nodes, vocab, generator=gen)
    for b in range(num_reqs):  # draft tokens get real probability mass at their parent
        for c in range(1, int(num_nodes[b])):
            logits[b, parents[b, c], tokens[b, c]] += 14.0
    probs = torch.softmax(logits, dim=-1)
    seed = torch.tensor([vocab * 1_000_003], dtype=torch.int64)
    keys = torch.randint(-(2**40), 2**40, (num_reqs,), generator=gen)
    positions = torch.randint(0, 4096, (num_reqs, max_nodes), generator=gen, dtype=torch.int32)
    args = (tokens, parents, num_nodes, seed, keys, positions)
    a = verify_sample_triton(probs.to(device), *(t.to(device) for t in args), max_depth=max_depth)
    b = verify_sample_ref(probs, *args, max_depth=max_depth)
    assert torch.equal(a.accepted_nodes.cpu(), b.accepted_nodes)
    assert torch.equal(a.num_accepted.cpu(), b.num_accepted)
    assert torch.equal(a.bonus.cpu(), b.bonus)
    raced = b.argmax >= 0
    assert torch.equal(a.argmax.cpu()[raced], b.argmax[raced])
    assert int(b.num_accepted.max()) >= 1  # the case exercises acceptance


def test_sampling_probs_matches_hf_warpers():
    """temperature, then top-k, then top-p, then softmax: the transformers warpers' semantics."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(2, 3, 40)
    for temperature, top_k, top_p in [(0.7, 0, 1.0), (1.3, 5, 1.0), (0.9, 0, 0.8), (1.0, 7, 0.6)]:
        scores = TemperatureLogitsWarper(temperature)(None, logits.view(6, 40).clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        want = torch.softmax(scores, dim=-1).view(2, 3, 40)
        got = sampling_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        torch.testing.assert_close(got, want)
        assert torch.equal(got == 0, want == 0)


def test_bad_inputs_raise():
    logits = torch.zeros(2, 3, V)
    t = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="parents"):
        verify_greedy_ref(logits, t, t[:, :2], _i32([3, 3]), max_depth=2)
    with pytest.raises(ValueError, match="max_depth"):
        verify_greedy_ref(logits, t, t, _i32([3, 3]))
    seed, keys = torch.zeros(1, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="positions"):
        verify_sample_ref(logits, t, t, _i32([3, 3]), seed, keys, t[:, :2], max_depth=2)
    with pytest.raises(ValueError, match="keys"):
        verify_sample_ref(logits, t, t, _i32([3, 3]), seed, keys.int(), t, max_depth=2)
    with pytest.raises(ValueError, match="temperature"):
        sampling_probs(logits, temperature=0.0)
