"""Static edge labels stored as uint16 (StaticAutomaton compact_edges, the default when the
vocabulary fits) or int32: every kernel that reads them gives exactly the same outputs, on random
corpora over large token ids (> 32,767, where a signed 16-bit view would go wrong) and on real
text. The other kernel tests run the uint16 default against golden cases and references."""

import pytest
import torch

from samgpu.automata import StaticAutomaton
from samgpu.kernels.sam_match import sam_match_ref, sam_match_triton
from samgpu.kernels.sam_tree import sam_tree_ref, sam_tree_triton
from samgpu.kernels.sam_update import sam_update_triton
from samgpu.sam import SamIndex
from tests.kernels._sam_common import pad_rows, random_text, real_texts

VOCAB = 65_536  # the largest vocabulary whose labels fit uint16
HIGH = 65_000  # ids are offset into the top of it: labels above 32,767 and near 65,535


def _corpora() -> list:
    gen = torch.Generator().manual_seed(7)
    docs = [[HIGH + t for t in random_text(gen, 200, 6)] for _ in range(4)]
    queries = [[HIGH + t for t in random_text(gen, 40, 6)] for _ in range(5)]
    texts = real_texts(8, 120)
    return [
        pytest.param(docs, queries, id="random-high-ids"),
        pytest.param(texts[:5], texts[5:] + [texts[0][30:90]], id="real-text"),
    ]


def _pair(docs, device):
    vocab = max(VOCAB, max(max(d) for d in docs) + 2)
    index = SamIndex.build(docs, vocab_size=vocab, eos_id=vocab - 1)
    narrow = StaticAutomaton.from_index(index, device)
    wide = StaticAutomaton.from_index(index, device, compact_edges=False)
    assert narrow.edge_token.dtype == torch.uint16 and wide.edge_token.dtype == torch.int32
    return index, narrow, wide


@pytest.mark.parametrize("docs, queries", _corpora())
@pytest.mark.parametrize("impl", [sam_match_triton, sam_match_ref], ids=["triton", "ref"])
def test_match_same_for_both_dtypes(impl, docs, queries, device):
    index, narrow, wide = _pair(docs, device)
    new_tokens, num_new = (t.to(device) for t in pad_rows(queries))
    out = []
    for auto in (narrow, wide):
        state = torch.zeros(len(queries), dtype=torch.int32, device=device)
        match_len = torch.zeros_like(state)
        impl(auto, new_tokens, num_new, state, match_len)
        out.append((state.cpu(), match_len.cpu()))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    # and the matches are the host index's
    for b, q in enumerate(queries):
        n = int(out[0][1][b])
        assert n == index.longest_match(q)[0]


@pytest.mark.parametrize("docs, queries", _corpora())
def test_update_same_for_both_dtypes(docs, queries, device):
    _, narrow, wide = _pair(docs, device)
    new_tokens, num_new = (t.to(device) for t in pad_rows(queries))
    out = []
    for auto in (narrow, wide):
        matches = auto.new_matches(len(queries))
        sam_update_triton(auto, matches, None, new_tokens, num_new)
        out.append((matches.state.cpu(), matches.match_len.cpu()))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("docs, queries", _corpora())
@pytest.mark.parametrize("impl", [sam_tree_triton, sam_tree_ref], ids=["triton", "ref"])
def test_tree_same_for_both_dtypes(impl, docs, queries, device):
    index, _, _ = _pair(docs, device)
    narrow = StaticAutomaton.from_index(index, device, with_count=True)
    wide = StaticAutomaton.from_index(index, device, with_count=True, compact_edges=False)
    states, lens = zip(*(index.match_state(q[-6:]) for q in queries), strict=True)
    roots = [q[-1] for q in queries]
    out = []
    for auto in (narrow, wide):
        B, N = len(queries), 16
        tok = torch.zeros(B, N, dtype=torch.int32, device=device)
        par, num = torch.zeros_like(tok), torch.zeros(B, dtype=torch.int32, device=device)
        args = (torch.tensor(x, dtype=torch.int32, device=device) for x in (states, lens, roots))
        impl(auto, *args, tok, par, num)
        out.append((tok.cpu(), par.cpu(), num.cpu()))
    for a, b in zip(*out, strict=True):
        assert torch.equal(a, b)
    assert int(out[0][2].max()) > 1  # some sequence got a real tree, not only its root
