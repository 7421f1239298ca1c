"""sam_match: static-automaton matches advanced over accepted tokens. Golden cases first, then
random and real-text sweeps against the reference (Triton under the interpreter on CPU, compared
exactly) and against the host index's own longest_match."""

import pytest
import torch

from samgpu.automata import StaticAutomaton
from samgpu.kernels.sam_match import BLOCK_E, sam_match, sam_match_ref, sam_match_triton
from samgpu.sam import SamIndex
from tests.kernels._sam_common import i32, pad_rows, random_text, real_texts

IMPLS = [pytest.param(sam_match_triton, id="triton"), pytest.param(sam_match_ref, id="ref")]


def _static(docs, vocab_size, eos_id, device="cpu"):
    index = SamIndex.build(docs, vocab_size=vocab_size, eos_id=eos_id)
    return index, StaticAutomaton.from_index(index, device)


def _advance(impl, auto, rows, state=None, match_len=None, device="cpu"):
    new_tokens, num_new = pad_rows(rows)
    b = len(rows)
    state = torch.zeros(b, dtype=torch.int32) if state is None else state.clone()
    match_len = torch.zeros(b, dtype=torch.int32) if match_len is None else match_len.clone()
    state, match_len = state.to(device), match_len.to(device)
    impl(auto, new_tokens.to(device), num_new.to(device), state, match_len)
    return state.cpu(), match_len.cpu()


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_match_climb_and_root(impl, device):
    """Corpus "1 2 3 EOS 1 2 4 EOS" (EOS = 5, plus singletons). From the root "1 2" matches with
    length 2, first ending at position 1; then "4" extends it to "1 2 4" (length 3, ending at 6);
    then "3": no "1 2 4 3", "2 4 3" or "4 3" -> climb to the root; "3" alone: length 1, at 2."""
    index, auto = _static([[1, 2, 3], [1, 2, 4]], 6, 5, device)
    endpos = index.endpos
    s, n = _advance(impl, auto, [[1, 2]], device=device)
    assert n.tolist() == [2] and endpos[s].tolist() == [1]
    s, n = _advance(impl, auto, [[4]], s, n, device)
    assert n.tolist() == [3] and endpos[s].tolist() == [6]
    s, n = _advance(impl, auto, [[3]], s, n, device)
    assert n.tolist() == [1] and endpos[s].tolist() == [2]


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_zero_tokens_and_out_of_vocab(impl, device):
    """PAD entries past num_new are ignored, num_new = 0 leaves the match as it is, and a token
    outside the index vocabulary (no root edge) falls to (root, 0); the next token matches anew."""
    _, auto = _static([[1, 2, 3]], 6, 5, device)
    s0, n0 = _advance(impl, auto, [[1, 2]], device=device)
    new_tokens = i32([[-1, -1, -1], [3, -1, -1], [9, 1, -1]]).to(device)
    num_new = i32([0, 1, 2]).to(device)
    state = s0.repeat(3).to(device)
    match_len = n0.repeat(3).to(device)
    impl(auto, new_tokens, num_new, state, match_len)
    assert match_len.tolist() == [2, 3, 1]
    assert state[0].item() == s0.item()


@pytest.mark.parametrize("impl", IMPLS)
def test_root_without_edge_falls_to_zero(impl, device):
    """A root with no edge on the token (an automaton without singletons): climbing reaches the
    root, which has nothing either -> (root, 0)."""
    _, auto = _static([[1, 2, 3]], 6, 5, device)
    auto.root_next[4] = -1  # as if token 4 never occurred
    s, n = _advance(impl, auto, [[1, 2, 4], [1, 2, 4, 1]], device=device)
    assert n.tolist() == [0, 1]
    assert s[0].item() == 0


def test_binary_search_in_wide_states(device):
    """A state with more than BLOCK_E edges: "0 x" for 40 different x gives state "0" 40 edges,
    searched by bisection before the vector compare; every x is found, ends where "0 x" ends."""
    width = 2 * BLOCK_E + 8
    docs = [[0, x] for x in range(1, width + 1)]
    index, auto = _static(docs, width + 3, width + 2, device)
    rows = [[0, x] for x in range(1, width + 1)] + [[0, width + 1]]
    for impl in (sam_match_triton, sam_match_ref):
        s, n = _advance(impl, auto, rows, device=device)
        assert n.tolist() == [2] * width + [1]
        assert index.endpos[s[:width]].tolist() == [3 * (x - 1) + 1 for x in range(1, width + 1)]


@pytest.mark.parametrize("num_reqs", [1, 3, 8])
@pytest.mark.parametrize("alphabet", [2, 4, 50])
def test_random_vs_reference_and_host(num_reqs, alphabet, device):
    """Random corpora and queries over small alphabets (deep matches, many climbs), fed in ragged
    steps of 0..6 tokens; after every step Triton == reference exactly, and (length, endpos) equals
    the host index's longest_match of everything fed so far."""
    gen = torch.Generator().manual_seed(1000 * num_reqs + alphabet)
    vocab, eos = alphabet + 1, alphabet
    docs = [
        random_text(gen, int(torch.randint(1, 60, (1,), generator=gen)), alphabet) for _ in "ab"
    ]
    index, auto = _static(docs, vocab, eos, device)
    fed = [[] for _ in range(num_reqs)]
    st = [torch.zeros(num_reqs, dtype=torch.int32) for _ in range(2)]
    ml = [torch.zeros(num_reqs, dtype=torch.int32) for _ in range(2)]
    for _ in range(4):
        rows = [
            random_text(gen, int(torch.randint(0, 7, (1,), generator=gen)), alphabet) for _ in fed
        ]
        for k, impl in enumerate((sam_match_triton, sam_match_ref)):
            st[k], ml[k] = _advance(impl, auto, rows, st[k], ml[k], device)
        assert torch.equal(st[0], st[1]) and torch.equal(ml[0], ml[1])
        for b, r in enumerate(rows):
            fed[b] += r
            if fed[b]:
                assert (ml[0][b].item(), index.endpos[st[0][b]].item()) == index.longest_match(
                    fed[b]
                )


def test_real_text(device):
    """Tokenized GSM8K texts: an index over three documents, queries that are a fourth document
    and a copy of the first's middle (long matches), 11 tokens per step."""
    texts = real_texts(4, 120)
    vocab = max(max(t) for t in texts) + 2
    index, auto = _static(texts[:3], vocab, vocab - 1, device)
    queries = [texts[3], texts[0][30:100], texts[1][::-1][:50]]
    st = torch.zeros(3, dtype=torch.int32)
    ml = torch.zeros(3, dtype=torch.int32)
    ref_st, ref_ml = st.clone(), ml.clone()
    for lo in range(0, 120, 11):
        rows = [q[lo : lo + 11] for q in queries]
        st, ml = _advance(sam_match_triton, auto, rows, st, ml, device)
        ref_st, ref_ml = _advance(sam_match_ref, auto, rows, ref_st, ref_ml, device)
        assert torch.equal(st, ref_st) and torch.equal(ml, ref_ml)
    assert ml[1].item() == 70  # the copied middle matches whole
    for b, q in enumerate(queries):
        assert (ml[b].item(), index.endpos[st[b]].item()) == index.longest_match(q)


def test_dispatch_uses_reference_on_cpu():
    _, auto = _static([[1, 2, 3]], 6, 5)
    state, match_len = torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    sam_match(auto, i32([[1, 2]]), i32([2]), state, match_len)
    assert match_len.tolist() == [2]


def test_bad_inputs():
    _, auto = _static([[1, 2, 3]], 6, 5)
    z = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="new_tokens"):
        sam_match_triton(auto, i32([1, 2]), z, z.clone(), z.clone())
    with pytest.raises(ValueError, match="num_new"):
        sam_match_triton(auto, i32([[1], [2]]), i32([1]), z.clone(), z.clone())
    with pytest.raises(ValueError, match="state"):
        sam_match_triton(auto, i32([[1], [2]]), z, z.long(), z.clone())
