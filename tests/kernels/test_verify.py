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


def _sample(impl, probs, tokens, parents, uniforms, exps, max_depth, device):
    num_nodes = [len(t) for t in tokens]
    width = probs.shape[1]
    toks = [t + [0] * (width - len(t)) for t in tokens]
    pars = [p + [P] * (width - len(p)) for p in parents]
    probs = probs.clone().to(device)
    out = impl(
        probs,
        _i32(toks, device),
        _i32(pars, device),
        _i32(num_nodes, device),
        torch.tensor(uniforms, dtype=torch.float32, device=device),
        exps.to(device),
        max_depth=max_depth,
    )
    return out.accepted_nodes.cpu().tolist(), out.num_accepted.cpu().tolist(), out.bonus.tolist()


def _onehot_exps(num_reqs, token, vocab=V):
    """Exp(1) stand-ins that make `token` win the race unless its probability is 0."""
    e = torch.full((num_reqs, vocab), 1e6)
    e[:, token] = 1e-6
    return e


@pytest.mark.parametrize("impl", SAMPLE)
def test_sample_renormalises_after_rejection(impl, device):
    """Root children c1 (token 2, p=0.5) and c2 (token 3, p=0.3). u(c1)=0.6 >= 0.5 rejects c1;
    c2 is then accepted with probability 0.3 / (1 - 0.5) = 0.6 > u(c2)=0.5 (without the
    renormalisation 0.5 < 0.3 would fail). c2 is a leaf: the bonus is drawn from p after c2,
    here the race is rigged for token 7."""
    probs = torch.zeros(1, 3, V)
    probs[0, 0, 2], probs[0, 0, 3], probs[0, 0, 9] = 0.5, 0.3, 0.2
    probs[0, 2, 7], probs[0, 2, 8] = 0.5, 0.5
    acc, num, bonus = _sample(
        impl, probs, [[1, 2, 3]], [[P, 0, 0]], [[0.0, 0.6, 0.5]], _onehot_exps(1, 7), 2, device
    )
    assert acc == [[0, 2, P]] and num == [1] and bonus == [7]


@pytest.mark.parametrize("impl", SAMPLE)
def test_sample_recovered_token_excludes_rejected_children(impl, device):
    """Both root children (tokens 2 and 3) are rejected (u = 0.99); the race is rigged for token
    2, but rejected children are zeroed in the residual, so the recovered token is 9."""
    probs = torch.zeros(1, 3, V)
    probs[0, 0, 2], probs[0, 0, 3], probs[0, 0, 9] = 0.5, 0.3, 0.2
    e = _onehot_exps(1, 2)
    e[0, 3] = 2e-6
    e[0, 9] = 1.0
    acc, num, bonus = _sample(
        impl, probs, [[1, 2, 3]], [[P, 0, 0]], [[0.0, 0.99, 0.99]], e, 2, device
    )
    assert acc == [[0, P, P]] and num == [0] and bonus == [9]


@pytest.mark.parametrize("impl", SAMPLE)
def test_sample_certain_chain_and_duplicate_sibling(impl, device):
    """Row 0: a chain whose tokens have probability 1 is fully accepted for any u < 1; the bonus
    comes from the leaf's distribution (token 5 with probability 1).
    Row 1: node 2 repeats node 1's token 4 under the root: after node 1 is rejected (p=0.2,
    u=0.5) node 2 must not be tried (its token is already zeroed) even with u=0; the recovered
    token is drawn from what is left (token 6, probability 0.8)."""
    probs = torch.zeros(2, 3, V)
    probs[0, 0, 3] = probs[0, 1, 4] = probs[0, 2, 5] = 1.0
    probs[1, 0, 4], probs[1, 0, 6] = 0.2, 0.8
    e = torch.ones(2, V)
    acc, num, bonus = _sample(
        impl,
        probs,
        [[1, 3, 4], [1, 4, 4]],
        [[P, 0, 1], [P, 0, 0]],
        [[0.0, 0.999, 0.999], [0.0, 0.5, 0.0]],
        e,
        2,
        device,
    )
    assert acc == [[0, 1, 2], [0, P, P]] and num == [2, 0] and bonus == [5, 6]


@pytest.mark.parametrize("num_reqs,max_nodes,max_depth,vocab", [(3, 9, 4, 12), (5, 20, 19, 1500)])
def test_sample_random_triton_equals_ref(num_reqs, max_nodes, max_depth, vocab, device):
    """Random trees, peaked distributions (so that acceptance happens), random uniforms and
    exponentials; vocab 1500 spans two BLOCK_V blocks of the race."""
    gen = torch.Generator().manual_seed(vocab)
    tokens, parents, num_nodes = _random_tree(num_reqs, max_nodes, gen)
    logits = 3.0 * torch.randn(num_reqs, max_nodes, vocab, generator=gen)
    for b in range(num_reqs):  # draft tokens get real probability mass at their parent
        for c in range(1, int(num_nodes[b])):
            logits[b, parents[b, c], tokens[b, c]] += 14.0
    probs = torch.softmax(logits, dim=-1)
    uniforms = torch.rand(num_reqs, max_nodes, generator=gen)
    exps = torch.empty(num_reqs, vocab).exponential_(generator=gen)
    pa, pb = probs.clone().to(device), probs.clone()
    args = (tokens, parents, num_nodes, uniforms, exps)
    a = verify_sample_triton(pa, *(t.to(device) for t in args), max_depth=max_depth)
    b = verify_sample_ref(pb, *args, max_depth=max_depth)
    assert torch.equal(a.accepted_nodes.cpu(), b.accepted_nodes)
    assert torch.equal(a.num_accepted.cpu(), b.num_accepted)
    assert torch.equal(a.bonus.cpu(), b.bonus)
    assert torch.equal(pa.cpu(), pb)  # the same rejected children zeroed
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
    with pytest.raises(ValueError, match="exponentials"):
        verify_sample_ref(
            logits, t, t, _i32([3, 3]), torch.zeros(2, 3), torch.zeros(2, 5), max_depth=2
        )
    with pytest.raises(ValueError, match="temperature"):
        sampling_probs(logits, temperature=0.0)
