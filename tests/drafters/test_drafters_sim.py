"""Every drafter through the Drafter contract, against a deterministic oracle "model"
(tests/drafters/sim.py): output identical to autoregressive decoding, trees well-formed, and
acceptance where it is known in advance (PLD on periodic text, Token Recycling on a first-order
chain, SAM selection)."""

import numpy as np
import pytest

from samgpu.drafters import build_drafter
from samgpu.sam import SamIndex
from samgpu.types import SOURCE_DYNAMIC, SOURCE_FALLBACK, SOURCE_STATIC
from tests.drafters.sim import autoregressive, markov_oracle, simulate

V = 24
METHODS = ["pld", "tr", "sam", "sam+tr", "sam-tree", "merged"]


def _build(method, index=None, max_reqs=3, **options):
    return build_drafter(
        method, vocab_size=V, max_reqs=max_reqs, max_len=256, device="cpu", index=index, **options
    )


def _corpus_index(oracle, prompt, n=120):
    return SamIndex.build([prompt + autoregressive(oracle, prompt, n)], vocab_size=V, eos_id=0)


def _siblings_unique(tree_tokens, tree_parents, n):
    sibs = [(tree_parents[i], tree_tokens[i]) for i in range(1, n)]
    return len(sibs) == len(set(sibs))


@pytest.mark.parametrize("method", METHODS)
def test_lossless_batch_of_three(method):
    """A second-order chain from three prompts (one periodic); the output equals AR's exactly, and
    drafting helps: fewer steps than tokens overall."""
    oracle = markov_oracle(V, order=2, seed=0)
    prompts = [list(range(1, 13)), [3, 3, 3], [5, 1, 5, 1, 5, 1, 5]]
    index = _corpus_index(oracle, [7, 8, 9]) if method.startswith(("sam", "merged")) else None
    drafter = _build(method, index=index)
    res = simulate(drafter, oracle, prompts, max_new=40, vocab=V)
    for b, p in enumerate(prompts):
        assert res.tokens[b] == autoregressive(oracle, p, 40)
    assert sum(res.steps) < 3 * 40


def test_pld_known_acceptance_on_periodic_text():
    """Oracle: next = token 5 back (period 5); prompt = two periods (10 tokens). Step 1: no
    occurrence of the suffix [3 4 5] is followed by 10 tokens; the earliest (at 2) by 5: 5
    drafted, all accepted, 6 emitted. Then an occurrence two or more periods back is followed by
    10: 10 drafted and accepted, 11 emitted per step, 6 + 4 x 11 = 50."""
    period = lambda ctx: ctx[-5]  # noqa: E731
    prompt = [1, 2, 3, 4, 5] * 2
    res = simulate(_build("pld", max_reqs=1), period, [prompt], max_new=50, vocab=V)
    assert res.tokens[0] == autoregressive(period, prompt, 50)
    assert res.accepted[0] == [5, 10, 10, 10, 10]


def test_tr_known_acceptance_on_first_order_chain():
    """Oracle: a first-order chain, so adj[t] = top-8 of the logits after t is exact once t has
    been a tree node. Once warm, every step accepts the template's deepest top-1 path: 6 tokens."""
    oracle = markov_oracle(V, order=1, seed=3)
    prompt = [4]
    res = simulate(_build("tr", max_reqs=1), oracle, [prompt], max_new=80, vocab=V)
    assert res.tokens[0] == autoregressive(oracle, prompt, 80)
    assert res.accepted[0][-4:-1] == [6, 6, 6]
    assert set(res.sources[0]) == {SOURCE_FALLBACK}


def test_sam_tr_selection_each_branch():
    """sam+tr (l_bias 5, l_threshold 5, n_predicts 40), first step:
    seq 0: prompt = a corpus prefix of 23 tokens -> static_len 23, 23 - 5 >= 5 and > dyn_len:
           static chain of 39 tokens, all accepted (the oracle is the corpus' generator);
    seq 1: a prompt not in the corpus, no repeats -> fallback to the TR tree;
    seq 2: X + X with X 8 fresh tokens -> dyn_len 8 > static_len - 5: dynamic chain."""
    oracle = markov_oracle(V, order=2, seed=0)
    corpus_prompt = [7, 8, 9]
    index = _corpus_index(oracle, corpus_prompt, n=200)
    seq0 = corpus_prompt + autoregressive(oracle, corpus_prompt, 20)
    seq1 = [23, 22, 21, 20, 19]
    x = [23, 1, 22, 2, 21, 3, 20, 4]
    seq2 = x + x
    assert index.longest_match(seq1)[0] < 3  # the premise of seq 1
    drafter = _build("sam+tr", index=index)
    res = simulate(drafter, oracle, [seq0, seq1, seq2], max_new=45, vocab=V)
    assert [res.sources[b][0] for b in range(3)] == [SOURCE_STATIC, SOURCE_FALLBACK, SOURCE_DYNAMIC]
    assert res.accepted[0][0] == 39
    for b, p in enumerate([seq0, seq1, seq2]):
        assert res.tokens[b] == autoregressive(oracle, p, 45)


def test_sam_longest_rule_sources():
    """sam (no threshold, l_bias 0): the longer match wins, the dynamic one on ties; its chain has
    min(60, 1 + 4 x len) nodes: the corpus prefix of 23 tokens drafts 59 tokens, all accepted."""
    oracle = markov_oracle(V, order=2, seed=0)
    corpus_prompt = [7, 8, 9]
    index = _corpus_index(oracle, corpus_prompt, n=200)
    seq0 = corpus_prompt + autoregressive(oracle, corpus_prompt, 20)
    x = [23, 1, 22, 2, 21, 3, 20, 4]
    res = simulate(_build("sam", index=index, max_reqs=2), oracle, [seq0, x + x], 60, V)
    assert [res.sources[b][0] for b in range(2)] == [SOURCE_STATIC, SOURCE_DYNAMIC]
    assert res.accepted[0][0] == 59


@pytest.mark.parametrize("method", ["merged", "sam-tree"])
def test_tree_methods_respect_budget_and_unique_siblings(method):
    oracle = markov_oracle(V, order=2, seed=1)
    index = _corpus_index(oracle, [7, 8, 9])
    drafter = _build(method, index=index, max_nodes=12)
    seen = []
    propose = drafter.propose

    def spy(state, tree):
        propose(state, tree)
        for b in range(tree.tokens.shape[0]):
            n = int(tree.num_nodes[b])
            assert n <= 12
            seen.append(_siblings_unique(tree.tokens[b].tolist(), tree.parents[b].tolist(), n))

    drafter.propose = spy
    prompts = [[7, 8, 9, 1], [2, 2, 2, 2], [5, 6, 5, 6, 5]]
    res = simulate(drafter, oracle, prompts, max_new=30, vocab=V)
    assert all(seen) and drafter.max_nodes == 12
    for b, p in enumerate(prompts):
        assert res.tokens[b] == autoregressive(oracle, p, 30)


@pytest.mark.parametrize("method", METHODS)
def test_triton_kernels_inside_drafters(method, monkeypatch):
    """The same loop with every kernel forced to Triton (interpreter on CPU), small budgets."""
    monkeypatch.setenv("SAMGPU_BACKEND", "triton")
    oracle = markov_oracle(V, order=2, seed=0)
    index = _corpus_index(oracle, [7, 8, 9]) if method.startswith(("sam", "merged")) else None
    opts = {"max_nodes": 10} if method in ("tr", "sam+tr", "sam-tree", "merged") else {}
    drafter = _build(method, index=index, max_reqs=2, **opts)
    prompts = [[7, 8, 9, 1, 2], [5, 1, 5, 1, 5]]
    res = simulate(drafter, oracle, prompts, max_new=16, vocab=V)
    for b, p in enumerate(prompts):
        assert res.tokens[b] == autoregressive(oracle, p, 16)


def test_sam_without_any_automaton_is_a_value_error():
    with pytest.raises(ValueError, match="no automaton"):
        _build("sam", index=None, use_dynamic=False)


def test_index_vocab_larger_than_model_is_a_value_error():
    index = SamIndex.build([np.arange(1, 30)], vocab_size=40, eos_id=0)
    with pytest.raises(ValueError, match="vocab_size"):
        _build("sam+tr", index=index)


def test_tr_prompt_bigrams_seed_the_table():
    """Prompt "3 5 3 7": adj[3] = [7, ...] (the later bigram wins), adj[5] = [3, ...]; without the
    option the table stays zero. With the period-4 oracle (next = token 4 back) and the prompt
    "1 2 3 4 1 2 3", the very first step already accepts along the bigram chain 4 1 2 3 ..."""
    import torch

    from samgpu.drafters.protocol import NewRequests
    from samgpu.types import DecodeState

    drafter = _build("tr", max_reqs=1)
    text = torch.tensor([[3, 5, 3, 7, -1]], dtype=torch.int32)
    lens = torch.tensor([4], dtype=torch.int32)
    zeros = torch.zeros(1, dtype=torch.int32)
    state = DecodeState(
        root=text[:, 3].clone(), cache_len=lens - 1, text=text, text_len=lens, prompt_len=lens,
        num_generated=zeros, max_new_tokens=zeros + 8, finished=zeros.bool(),
    )  # fmt: skip
    drafter.start(state, NewRequests.whole_batch(state))
    adj = drafter.recycling.table.adj
    assert adj[3, 0] == 7 and adj[5, 0] == 3
    assert int(adj[7].abs().sum()) == 0
    off = _build("tr", max_reqs=1, prompt_bigrams=False)
    off.start(state, NewRequests.whole_batch(state))
    assert int(off.recycling.table.adj.abs().sum()) == 0
    period = lambda ctx: ctx[-4]  # noqa: E731
    res = simulate(_build("tr", max_reqs=1), period, [[1, 2, 3, 4, 1, 2, 3]], 20, V)
    assert res.accepted[0][0] == 6
