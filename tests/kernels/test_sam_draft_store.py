"""sam_draft_chain with the cross-request store as a third source: golden chains (cut before the
separator, the longer generation's match, ties to the active one), the three-source rule, a random
sweep Triton == reference with a brute-force chain oracle, the store-off rule unchanged, and a
store match without a continuation (it ends a stored document) giving way to the next-best source
(issue 16)."""

import pytest
import torch

from samgpu.automata import StoreAutomaton
from samgpu.kernels import _sam_jit as J
from samgpu.kernels.sam_draft import SamSelectConfig, sam_draft_chain_ref, sam_draft_chain_triton
from samgpu.kernels.sam_store_match import sam_store_match_ref
from samgpu.kernels.types import (
    SOURCE_DYNAMIC,
    SOURCE_FALLBACK,
    SOURCE_NONE,
    SOURCE_STATIC,
    SOURCE_STORE,
)
from samgpu.types import DraftTree
from tests.kernels._sam_common import i32, pad_rows, random_text
from tests.kernels._wrong_buffers import wrong
from tests.kernels.test_sam_draft import _dynamic, _static

IMPLS = [
    pytest.param(sam_draft_chain_triton, id="triton"),
    pytest.param(sam_draft_chain_ref, id="ref"),
]


def _store(docs_rounds, queries, vocab, capacity, device):
    """A store filled with rounds of documents, each sequence's matches walked over its query."""
    st = StoreAutomaton(max(len(queries), 1), capacity, vocab, device)
    for docs in docs_rounds:
        st.append_docs(docs)
    if queries:
        sam_store_match_ref(st, *[t.to(device) for t in pad_rows(queries)])
    return st


def _draft(impl, static, sm, dyn, store, roots, config, max_nodes, device, node_offset=1):
    tree = DraftTree.empty(len(roots), max_nodes, device)
    source, chain_len = impl(
        static, sm, dyn, i32(roots).to(device), tree, config, node_offset=node_offset, store=store
    )
    return tree, source.tolist(), chain_len.tolist()


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_store_chain_stops_before_separator(impl, device):
    """Store docs "1 2 3 4", "1 2 9" (V 10, SEP 10): a sequence ending in "7 1 2" matches "1 2"
    (earliest end 1), chain "3 4" (the separator is never drafted), source SOURCE_STORE; `sam`
    (longest rule): min(60, 1 + 4 x 2) = 9 nodes allowed, 2 used."""
    st = _store([[[1, 2, 3, 4], [1, 2, 9]]], [[7, 1, 2]], 10, 32, device)
    tree, source, chain_len = _draft(
        impl, None, None, None, st, [2], SamSelectConfig.sam_only(), 8, device
    )
    assert tree.tokens.tolist() == [[2, 3, 4, 0, 0, 0, 0, 0]]
    assert tree.parents.tolist() == [[-1, 0, 1, -1, -1, -1, -1, -1]]
    assert source == [SOURCE_STORE] and chain_len == [2]


@pytest.mark.parametrize("impl", IMPLS)
def test_store_arrays_of_other_shapes_are_refused(impl, device):
    """The draft reads generation g's row of endpos at g * 2C (C from tokens): a narrower endpos
    is a ValueError naming it, not a read past its end. Negative control: the golden test above
    drafts from the same store with its own arrays."""
    st = _store([[[1, 2, 3, 4], [1, 2, 9]]], [[7, 1, 2]], 10, 32, device)
    st.endpos = wrong(st.endpos, "width")
    with pytest.raises(ValueError, match=r"store\.endpos "):
        _draft(impl, None, None, None, st, [2], SamSelectConfig.sam_only(), 8, device)


@pytest.mark.parametrize("impl", IMPLS)
def test_longer_generation_wins_ties_go_to_the_active_one(impl, device):
    """C = 8: "1 2 3" in generation 0, then "5 1 2 4 6 6" (7 with SEP) rotates into generation 1
    (active). Query "5 1 2": generation 1 matches 3, generation 0 matches 2 -> chain "4 6 6" from
    generation 1. Query "7 1 2": both match 2 -> the active generation 1: chain "4 6 6"."""
    st = _store([[[1, 2, 3]], [[5, 1, 2, 4, 6, 6]]], [[5, 1, 2], [7, 1, 2]], 10, 8, device)
    assert st.active.tolist() == [1]
    assert st.match_len[:, 0].tolist() == [2, 3] and st.match_len[:, 1].tolist() == [2, 2]
    cfg = SamSelectConfig(mode="longest", l_bias=0, max_predicts=4)
    tree, source, chain_len = _draft(impl, None, None, None, st, [2, 2], cfg, 4, device)
    assert tree.tokens.tolist() == [[2, 4, 6, 6], [2, 4, 6, 6]] and chain_len == [3, 3]
    assert source == [SOURCE_STORE, SOURCE_STORE]


@pytest.mark.parametrize("impl", IMPLS)
def test_three_source_threshold_rule(impl, device):
    """sam+tr rule (l_bias 5, l_threshold 5) with a store (store_bias 0):
    row 0: store 6 > dynamic 2, static 3 - 5 -> store chain;
    row 1: dynamic 6 ties the store's 6 -> dynamic;
    row 2: store 4 < threshold, others shorter -> fallback;
    with store_bias 2, row 0's store (6 - 2 = 4) falls below the threshold -> fallback."""
    seqs = [
        [9, 1, 2, 3, 4, 5, 6],
        [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6],
        [8, 1, 2, 3, 4],
    ]
    st = _store([[[1, 2, 3, 4, 5, 6, 7, 8]]], seqs, 12, 64, device)
    dyn = _dynamic(seqs, 32, 12, device)
    static, sm = _static([[1, 2, 3, 11]], 12, 10, seqs, device)
    assert st.match_len[0].tolist() == [6, 6, 4] and dyn.match_len.tolist() == [0, 6, 0]
    roots = [s[-1] for s in seqs]
    tree, source, _ = _draft(impl, static, sm, dyn, st, roots, SamSelectConfig(), 8, device)
    assert source == [SOURCE_STORE, SOURCE_DYNAMIC, SOURCE_FALLBACK]
    assert tree.tokens[0, :3].tolist() == [6, 7, 8]
    cfg = SamSelectConfig(store_bias=2)
    _, source, _ = _draft(impl, static, sm, dyn, st, roots, cfg, 8, device)
    assert source[0] == SOURCE_FALLBACK


def _brute_store_chain(store, b, query, n):
    """Continuation after the earliest occurrence of the query's last match_len tokens in the
    generation holding row b's longer match (ties: the active one), cut before the separator."""
    lens = store.match_len[:, b].tolist()
    g = int(store.active[0]) if lens[0] == lens[1] else int(lens[1] > lens[0])
    m = lens[g]
    text = store.tokens[g, : int(store.text_len[g])].tolist()
    suffix = query[len(query) - m :]
    for end in range(m - 1, len(text)):
        if text[end - m + 1 : end + 1] == suffix:
            chain = text[end + 1 : end + 1 + n]
            return chain[: chain.index(store.vocab_size)] if store.vocab_size in chain else chain
    raise AssertionError("suffix not found")


@pytest.mark.parametrize("num_reqs", [1, 3])
@pytest.mark.parametrize(
    "config",
    [
        SamSelectConfig(),
        SamSelectConfig.sam_only(),
        SamSelectConfig(l_bias=0, l_threshold=2, n_predicts=12, store_bias=1),
    ],
    ids=["sam+tr", "sam", "low-threshold-bias1"],
)
def test_random_with_store_vs_reference_and_oracle(num_reqs, config, device):
    """Random corpora, texts and store documents (two generations, rotated) over 3 symbols;
    static + dynamic + store, and store with each one: Triton == reference on every output; store
    chains equal the brute-force continuation."""
    gen = torch.Generator().manual_seed(num_reqs + 7)
    vocab, eos = 5, 4
    docs = [random_text(gen, 40, 3) for _ in range(2)]
    texts = [
        random_text(gen, int(torch.randint(1, 40, (1,), generator=gen)), 3) for _ in range(num_reqs)
    ]
    store_docs = [[random_text(gen, 20, 3) for _ in range(2)], [random_text(gen, 25, 3)]]
    st = _store(store_docs, texts, vocab, 48, device)
    static, sm = _static(docs, vocab, eos, texts, device)
    dyn = _dynamic(texts, 64, vocab, device)
    roots = [t[-1] for t in texts]
    for args in ((static, sm, dyn), (static, sm, None), (None, None, dyn), (None, None, None)):
        got = _draft(sam_draft_chain_triton, *args, st, roots, config, 16, device)
        want = _draft(sam_draft_chain_ref, *args, st, roots, config, 16, device)
        for f in ("tokens", "parents", "num_nodes"):
            assert torch.equal(getattr(got[0], f), getattr(want[0], f)), f
        assert got[1:] == want[1:]
        tree, source, chain_len = got
        for b, text in enumerate(texts):
            if source[b] == SOURCE_STORE:
                chain = tree.tokens[b, 1 : 1 + chain_len[b]].tolist()
                assert chain == _brute_store_chain(st, b, text, chain_len[b]) and chain
            assert chain_len[b] > 0 or source[b] in (SOURCE_NONE, SOURCE_FALLBACK)


def test_store_off_is_the_two_source_rule(device):
    """An empty store never wins (its match length 0 loses to any match, and an empty chain is
    never drafted): the trees equal those drafted without the store; and the same trees again with
    store_bias huge. Negative control: with a store holding the answer, the trees differ."""
    gen = torch.Generator().manual_seed(3)
    texts = [x + x for x in (random_text(gen, 15, 3) for _ in range(3))]  # dynamic matches
    static, sm = _static([random_text(gen, 40, 3)], 5, 4, texts, device)
    dyn = _dynamic(texts, 64, 5, device)
    roots = [t[-1] for t in texts]
    empty = _store([], texts, 5, 32, device)
    full = _store([[t + [3] * 8 for t in texts]], texts, 5, 256, device)
    for cfg in (SamSelectConfig(), SamSelectConfig.sam_only()):
        base = _draft(sam_draft_chain_triton, static, sm, dyn, None, roots, cfg, 16, device)
        with_empty = _draft(sam_draft_chain_triton, static, sm, dyn, empty, roots, cfg, 16, device)
        assert torch.equal(base[0].tokens, with_empty[0].tokens) and base[1:] == with_empty[1:]
        with_full = _draft(sam_draft_chain_triton, static, sm, dyn, full, roots, cfg, 16, device)
        assert SOURCE_STORE in with_full[1] and not torch.equal(base[0].tokens, with_full[0].tokens)
        assert SOURCE_STATIC in base[1] or SOURCE_DYNAMIC in base[1]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "config", [SamSelectConfig(), SamSelectConfig.sam_only()], ids=["sam+tr", "sam"]
)
def test_cut_store_chain_yields_to_the_next_best_source(impl, config, device):
    """Issue 16. Store docs "1 2 3 4 5 6", "10 1 2 3 4 5 11" (V 12, SEP 12), no static automaton.
    row 0: text "2 3 4 5 6 7 8 1 2 3 4 5 6": the store's match (6) beats the dynamic one (5) but
    ends the first document (SEP next): no store chain, so the dynamic automaton drafts by the same
    rule (5 >= l_threshold; `sam`: 1 + 4 x 5 nodes): "7 8 1 2 3 4 5" in 8 nodes (before the fix:
    SOURCE_FALLBACK / SOURCE_NONE and no chain);
    row 1 (control): text "2 3 4 5 6 7 8 10 1 2 3 4 5": store 6 > dynamic 4, "11" next: the
    store drafts "11"."""
    seqs = [[2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7, 8, 10, 1, 2, 3, 4, 5]]
    st = _store([[[1, 2, 3, 4, 5, 6], [10, 1, 2, 3, 4, 5, 11]]], seqs, 12, 64, device)
    dyn = _dynamic(seqs, 32, 12, device)
    assert st.match_len[0].tolist() == [6, 6] and dyn.match_len.tolist() == [5, 4]
    tree, source, chain_len = _draft(impl, None, None, dyn, st, [6, 5], config, 8, device)
    assert source == [SOURCE_DYNAMIC, SOURCE_STORE] and chain_len == [7, 1]
    assert tree.tokens.tolist() == [[6, 7, 8, 1, 2, 3, 4, 5], [5, 11, 0, 0, 0, 0, 0, 0]]
    assert tree.parents.tolist() == [[-1, 0, 1, 2, 3, 4, 5, 6], [-1, 0, -1, -1, -1, -1, -1, -1]]
    assert tree.num_nodes.tolist() == [8, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "config",
    [
        SamSelectConfig(),
        SamSelectConfig.sam_only(),
        SamSelectConfig(l_bias=0, l_threshold=2, n_predicts=12, store_bias=-1),
    ],
    ids=["sam+tr", "sam", "low-threshold-bias-1"],
)
def test_store_without_continuation_changes_nothing(seed, config, device):
    """Random texts over 3 symbols, static + dynamic + store; the store holds the tails of the
    even rows' texts (so their match can end a document: the cut case of issue 16) and the odd
    rows' whole texts followed by "3 3" (a continuation). Triton == reference on every output;
    every row whose store match has no continuation (brute force) gets the tree, source and chain
    it gets with no store at all. Controls: some such row has the store winning the selection on
    its length (the rows that got the fallback before the fix), and some row drafts "3" from the
    store."""
    gen = torch.Generator().manual_seed(seed)
    vocab, eos = 5, 4
    texts = [random_text(gen, int(torch.randint(8, 30, (1,), generator=gen)), 3) for _ in range(6)]
    docs = [t[-int(torch.randint(3, 8, (1,), generator=gen)) :] for t in texts[::2]]
    docs += [t + [3, 3] for t in texts[1::2]]
    st = _store([docs], texts, vocab, 128, device)
    static, sm = _static([random_text(gen, 40, 3)], vocab, eos, texts, device)
    dyn = _dynamic(texts, 64, vocab, device)
    roots = [t[-1] for t in texts]
    got = _draft(sam_draft_chain_triton, static, sm, dyn, st, roots, config, 16, device)
    want = _draft(sam_draft_chain_ref, static, sm, dyn, st, roots, config, 16, device)
    for f in ("tokens", "parents", "num_nodes"):
        assert torch.equal(getattr(got[0], f), getattr(want[0], f)), f
    assert got[1:] == want[1:]
    alone = _draft(sam_draft_chain_ref, static, sm, dyn, None, roots, config, 16, device)
    c, won_cut = config, 0
    for b, text in enumerate(texts):
        st_len = int(st.match_len[:, b].max())
        if st_len > 0 and _brute_store_chain(st, b, text, 1):
            continue
        for f in ("tokens", "parents"):
            assert torch.equal(getattr(got[0], f)[b], getattr(alone[0], f)[b]), (b, f)
        assert (got[1][b], got[2][b]) == (alone[1][b], alone[2][b]), b
        args = (int(sm.match_len[b]), int(dyn.match_len[b]), c.mode_id, c.l_bias, c.l_threshold)
        args += (c.n_predicts, c.max_predicts, c.alpha, st_len, c.store_bias)
        won_cut += J.select_source_py(*args)[0] == SOURCE_STORE
    assert won_cut > 0
    assert any(s == SOURCE_STORE and got[0].tokens[b, 1] == 3 for b, s in enumerate(got[1]))
