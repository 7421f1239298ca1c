"""sam_draft_chain: fused source selection + chain gather into a DraftTree. Golden trees first (the
module docstring's examples), then the chain rules (EOS stop, end of text, climbing, fallback,
offsets), random sweeps Triton == reference, and a brute-force substring oracle for the chains."""

import pytest
import torch

from samgpu.automata import DynamicAutomata, Matches, StaticAutomaton
from samgpu.kernels.sam_draft import (
    SamSelectConfig,
    sam_draft_chain,
    sam_draft_chain_ref,
    sam_draft_chain_triton,
)
from samgpu.kernels.sam_dynamic import sam_dynamic_extend_ref
from samgpu.kernels.types import SOURCE_DYNAMIC, SOURCE_FALLBACK, SOURCE_NONE, SOURCE_STATIC
from samgpu.sam import SamIndex
from samgpu.types import DraftTree
from tests.kernels._sam_common import i32, pad_rows, random_text
from tests.kernels._wrong_buffers import wrong

IMPLS = [
    pytest.param(sam_draft_chain_triton, id="triton"),
    pytest.param(sam_draft_chain_ref, id="ref"),
]


def _dynamic(texts, capacity, vocab, device):
    auto = DynamicAutomata(max(len(texts), 1), capacity, vocab, "cpu")
    auto.reset()
    sam_dynamic_extend_ref(auto, *pad_rows(texts))  # the reference builds; the kernel is tested
    for name, t in vars(auto).items():  # elsewhere. Move the slots to the test device.
        if isinstance(t, torch.Tensor):
            setattr(auto, name, t.to(device))
    return auto


def _static(docs, vocab, eos, queries, device):
    index = SamIndex.build(docs, vocab_size=vocab, eos_id=eos)
    auto = StaticAutomaton.from_index(index, device)
    matches = Matches.empty(len(queries), device)
    for b, q in enumerate(queries):
        state, match_len = index.match_state(q) if q else (0, 0)
        matches.state[b], matches.match_len[b] = state, match_len
    return auto, matches


def _draft(impl, static, smatch, dyn, roots, config, max_nodes, device, node_offset=1, tree=None):
    tree = DraftTree.empty(len(roots), max_nodes, device) if tree is None else tree
    source, chain_len = impl(
        static, smatch, dyn, i32(roots).to(device), tree, config, node_offset=node_offset
    )
    return tree, source.tolist(), chain_len.tolist()


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_dynamic_chain(impl, device):
    """Text "1 2 3 1 2" (root 2), mode "dynamic", n_predicts 4: the match "1 2" first ends at 1;
    the continuation after it is short (5 - 2 - 1 < 4) but its state {"1 2", "2"} links to the
    root, so no climb. Chain "3 1 2": tokens [2, 3, 1, 2], parents [-1, 0, 1, 2]."""
    dyn = _dynamic([[1, 2, 3, 1, 2]], 16, 8, device)
    cfg = SamSelectConfig(mode="dynamic", n_predicts=4)
    tree, source, chain_len = _draft(impl, None, None, dyn, [2], cfg, 6, device)
    assert tree.tokens.tolist() == [[2, 3, 1, 2, 0, 0]]
    assert tree.parents.tolist() == [[-1, 0, 1, 2, -1, -1]]
    assert tree.num_nodes.tolist() == [4] and source == [SOURCE_DYNAMIC] and chain_len == [3]


@pytest.mark.parametrize("impl", IMPLS)
def test_climb_finds_a_longer_continuation(impl, device):
    """Text "5 1 2 9 9 9 9 9 9 3 1 2": the match "1 2" (ending at 2) leaves 12 - 2 - 2 = 8 tokens;
    with n_predicts 4 that is enough, no climb: chain "9 9 9". Text "7 7 7 7 7": the match
    "7 7 7 7" first ends at 3, leaving nothing; climbing (official to_anc) goes to "7" (ending at
    0), chain "7 7 7"; without climbing the chain is the single root token "7" after position 3."""
    dyn = _dynamic([[5, 1, 2, 9, 9, 9, 9, 9, 9, 3, 1, 2], [7, 7, 7, 7, 7]], 16, 10, device)
    cfg = SamSelectConfig(mode="dynamic", n_predicts=4)
    tree, _, chain_len = _draft(impl, None, None, dyn, [2, 7], cfg, 5, device)
    assert tree.tokens.tolist() == [[2, 9, 9, 9, 0], [7, 7, 7, 7, 0]] and chain_len == [3, 3]
    cfg = SamSelectConfig(mode="dynamic", n_predicts=4, climb_dynamic=False)
    tree, _, chain_len = _draft(impl, None, None, dyn, [2, 7], cfg, 5, device)
    assert tree.tokens[1].tolist() == [7, 7, 0, 0, 0] and chain_len == [3, 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_static_chain_stops_at_eos(impl, device):
    """Corpus "1 2 3 4 EOS 1 2 3 6 EOS" (EOS 5): the query "1 2" first ends at 1, chain "3 4 EOS"
    and not the next document; with stop_at_eos=False the chain runs on across it."""
    static, sm = _static([[1, 2, 3, 4], [1, 2, 3, 6]], 7, 5, [[1, 2]], device)
    cfg = SamSelectConfig(mode="static", n_predicts=8)
    tree, source, chain_len = _draft(impl, static, sm, None, [2], cfg, 8, device)
    assert tree.tokens.tolist() == [[2, 3, 4, 5, 0, 0, 0, 0]] and chain_len == [3]
    assert source == [SOURCE_STATIC]
    cfg = SamSelectConfig(mode="static", n_predicts=8, stop_at_eos=False)
    tree, _, chain_len = _draft(impl, static, sm, None, [2], cfg, 8, device)
    assert tree.tokens.tolist() == [[2, 3, 4, 5, 1, 2, 3, 6]] and chain_len == [7]


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_chain_falls_back_or_none(impl, device):
    """A static match whose earliest occurrence ends the corpus ("4 EOS EOS": the corpus ends with
    the singleton documents "4 EOS" and "EOS") leaves nothing to draft: SOURCE_FALLBACK in the
    threshold mode, SOURCE_NONE in the others; the tree is the root alone."""
    static, sm = _static([[1, 2, 3]], 6, 5, [[4, 5, 5]], device)
    assert sm.match_len.tolist() == [3]
    for cfg, want in (
        (SamSelectConfig(l_bias=0, l_threshold=1), SOURCE_FALLBACK),
        (SamSelectConfig.sam_only(), SOURCE_NONE),
    ):
        tree, source, chain_len = _draft(impl, static, sm, None, [5], cfg, 4, device)
        assert source == [want] and chain_len == [0]
        assert tree.tokens.tolist() == [[5, 0, 0, 0]] and tree.num_nodes.tolist() == [1]
        assert tree.parents.tolist() == [[-1, -1, -1, -1]]


@pytest.mark.parametrize("impl", IMPLS)
def test_threshold_selection_and_fallback(impl, device):
    """sam+tr: row 0 static 12 vs dynamic 6 -> static chain; row 1 both short -> fallback, root
    only (the Token Recycling drafter fills the rest); row 2 dynamic wins the tie."""
    docs = [list(range(1, 13)) + [20, 21, 22]]
    queries = [list(range(1, 13)), [9, 11], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
    static, sm = _static(docs, 30, 29, queries, device)
    texts = [
        [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6],
        [1, 2, 1, 2],
        [9, 8, 7, 6, 5, 9, 8, 7, 6, 5],
    ]
    dyn = _dynamic(texts, 32, 30, device)
    assert sm.match_len.tolist() == [12, 1, 10] and dyn.match_len.tolist() == [6, 2, 5]
    tree, source, chain_len = _draft(
        impl, static, sm, dyn, [12, 2, 5], SamSelectConfig(), 6, device
    )
    assert source == [SOURCE_STATIC, SOURCE_FALLBACK, SOURCE_DYNAMIC]
    assert tree.tokens[0].tolist() == [12, 20, 21, 22, 29, 0] and chain_len[0] == 4  # EOS 29
    assert tree.num_nodes.tolist() == [5, 1, 6]
    assert tree.tokens[2].tolist() == [5, 9, 8, 7, 6, 5]  # budget: 5 of the 39 (6 tree nodes)


@pytest.mark.parametrize("impl", IMPLS)
def test_node_offset_keeps_earlier_nodes(impl, device):
    """node_offset 3: nodes 1-2 (another drafter's) are left alone, the chain hangs off the root
    at nodes 3.., parents [0, 3, 4, ...], num_nodes = 3 + chain length."""
    dyn = _dynamic([[1, 2, 3, 4, 1, 2]], 16, 8, device)
    tree = DraftTree.make_dummy([[2, 8, 9, 0, 0, 0, 0]], [[-1, 0, 0, -1, -1, -1, -1]], device)
    cfg = SamSelectConfig(mode="dynamic")
    tree, source, chain_len = _draft(impl, None, None, dyn, [2], cfg, 7, device, 3, tree)
    assert tree.tokens.tolist() == [[2, 8, 9, 3, 4, 1, 2]]
    assert tree.parents.tolist() == [[-1, 0, 0, 0, 3, 4, 5]]
    assert tree.num_nodes.tolist() == [7] and chain_len == [4]


def _brute_force_chain(query, corpus, match_len, n, search_len=None):
    """corpus[end + 1 : end + 1 + n] for the earliest `end` (< search_len) at which query's last
    match_len tokens occur in corpus."""
    suffix = query[len(query) - match_len :]
    for end in range(match_len - 1, len(corpus) if search_len is None else search_len):
        if corpus[end - match_len + 1 : end + 1] == suffix:
            return corpus[end + 1 : end + 1 + n]
    raise AssertionError("suffix not found")


@pytest.mark.parametrize("num_reqs", [1, 3, 8])
@pytest.mark.parametrize("max_nodes", [7, 64])
@pytest.mark.parametrize(
    "config",
    [
        SamSelectConfig(),
        SamSelectConfig.sam_only(),
        SamSelectConfig(mode="static", n_predicts=50, stop_at_eos=False),
        SamSelectConfig(mode="dynamic", n_predicts=20, climb_dynamic=False),
        SamSelectConfig(mode="dynamic", n_predicts=20),
        SamSelectConfig(l_bias=0, l_threshold=2, n_predicts=12),
    ],
    ids=["sam+tr", "sam", "static", "dynamic-noclimb", "dynamic", "low-threshold"],
)
def test_random_vs_reference_and_oracle(num_reqs, max_nodes, config, device):
    """Random corpora and texts over 3-symbol alphabets (long matches); static + dynamic, node
    offsets 1 and 2: every tree field, source and chain_len equal between Triton and the reference.
    Chains without climbing equal the brute-force continuation of the earliest occurrence."""
    gen = torch.Generator().manual_seed(num_reqs * 100 + max_nodes)
    vocab, eos = 5, 4
    docs = [random_text(gen, 40, 3) for _ in range(3)]
    texts = [
        random_text(gen, int(torch.randint(1, 50, (1,), generator=gen)), 3) for _ in range(num_reqs)
    ]
    static, sm = _static(docs, vocab, eos, texts, device)
    dyn = _dynamic(texts, 64, vocab, device)
    roots = [t[-1] for t in texts]
    corpus = static.tokens.tolist()
    for offset in (1, 2):
        got = _draft(
            sam_draft_chain_triton, static, sm, dyn, roots, config, max_nodes, device, offset
        )
        want = _draft(
            sam_draft_chain_ref, static, sm, dyn, roots, config, max_nodes, device, offset
        )
        for f in ("tokens", "parents", "num_nodes"):
            assert torch.equal(getattr(got[0], f), getattr(want[0], f)), f
        assert got[1:] == want[1:]
        tree, source, chain_len = got
        for b, text in enumerate(texts):
            chain = tree.tokens[b, offset : offset + chain_len[b]].tolist()
            assert chain_len[b] > 0 or source[b] in (SOURCE_NONE, SOURCE_FALLBACK)
            if source[b] == SOURCE_STATIC and not config.stop_at_eos:
                ml = sm.match_len[b].item()
                assert chain == _brute_force_chain(text, corpus, ml, chain_len[b])
            if source[b] == SOURCE_DYNAMIC and not config.climb_dynamic:
                ml = dyn.match_len[b].item()
                want_chain = _brute_force_chain(text, text, ml, chain_len[b], len(text) - 1)
                assert chain == want_chain
    for has_static, has_dyn in ((True, False), (False, True)):
        args = (
            static if has_static else None,
            sm if has_static else None,
            dyn if has_dyn else None,
        )
        got = _draft(sam_draft_chain_triton, *args, roots, config, max_nodes, device)
        want = _draft(sam_draft_chain_ref, *args, roots, config, max_nodes, device)
        assert torch.equal(got[0].tokens, want[0].tokens) and got[1:] == want[1:]


def test_dispatch_and_bad_inputs():
    dyn = _dynamic([[1, 2, 1, 2]], 8, 4, "cpu")
    tree = DraftTree.empty(1, 4, "cpu")
    source, _ = sam_draft_chain(None, None, dyn, i32([2]), tree, SamSelectConfig(mode="dynamic"))
    assert source.tolist() == [SOURCE_DYNAMIC]
    cfg = SamSelectConfig()
    with pytest.raises(ValueError, match="node_offset"):
        sam_draft_chain_triton(None, None, dyn, i32([2]), tree, cfg, node_offset=0)
    with pytest.raises(ValueError, match="needs a static automaton, a dynamic one, a store"):
        sam_draft_chain_triton(None, None, None, i32([2]), tree, cfg)
    with pytest.raises(ValueError, match="together"):
        sam_draft_chain_triton(object(), None, dyn, i32([2]), tree, cfg)
    with pytest.raises(ValueError, match="tree.num_nodes"):
        sam_draft_chain_triton(None, None, dyn, i32([2, 2]), tree, cfg)
    bad = DraftTree(tree.tokens[:, :3], tree.parents, tree.num_nodes)
    with pytest.raises(ValueError, match="tree.tokens"):
        sam_draft_chain_triton(None, None, dyn, i32([2]), bad, cfg)
    with pytest.raises(ValueError, match="only 1 dynamic slots"):
        sam_draft_chain_triton(None, None, dyn, i32([2, 2]), DraftTree.empty(2, 4, "cpu"), cfg)
    # the chain is read from link and endpos rows at 2C (C from tokens): a narrower array is
    # refused, not read past its end (the right arrays drafted above: the negative control)
    dyn.link = wrong(dyn.link, "width")
    with pytest.raises(ValueError, match=r"slots\.link "):
        sam_draft_chain_triton(None, None, dyn, i32([2]), tree, cfg)
