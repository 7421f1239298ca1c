"""samgpu.automata: device-side automaton holders, and the whole match -> select -> draft pipeline
against an independent model of the official SAM-Decoding semantics (dict-based suffix automata,
the `samd` DraftModel.lookup rule and `gen_draft`, written here from the paper's description).

The official decoder keeps its dynamic automaton over the committed text WITHOUT the current root
(the root is only looked up); samgpu extends it with the root too (match first, then extend), so a
samgpu chain may end with one extra token, the root itself, where the official text stops."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samgpu.automata import DynamicAutomata, Matches, StaticAutomaton
from samgpu.kernels.sam_draft import SamSelectConfig, sam_draft_chain
from samgpu.kernels.types import SOURCE_DYNAMIC, SOURCE_FALLBACK, SOURCE_STATIC
from samgpu.sam import SamIndex
from samgpu.types import DraftTree
from tests.kernels._sam_common import i32, pad_rows, random_text, real_texts


class OfficialSam:
    """Dict-based suffix automaton with the official conventions: 1-based `min_endpos`,
    `input_ids[0] = -1`, `transfer` = climb while no edge (never from the root), to_anc climb."""

    def __init__(self):
        self.next, self.link, self.length, self.min_endpos = [{}], [-1], [0], [0]
        self.input_ids, self.last, self.cur = [-1], 0, (0, 0)

    def _add(self, c):
        n = len(self.input_ids) - 1 + 1
        cur = len(self.next)
        self.next.append({}), self.link.append(-1), self.length.append(n), self.min_endpos.append(n)
        p = self.last
        while p != -1 and c not in self.next[p]:
            self.next[p][c] = cur
            p = self.link[p]
        if p == -1:
            self.link[cur] = 0
        else:
            q = self.next[p][c]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:
                clone = len(self.next)
                self.next.append(dict(self.next[q])), self.link.append(self.link[q])
                self.length.append(self.length[p] + 1), self.min_endpos.append(self.min_endpos[q])
                while p != -1 and self.next[p].get(c) == q:
                    self.next[p][c] = clone
                    p = self.link[p]
                self.link[q] = self.link[cur] = clone
        self.last = cur
        self.input_ids.append(c)

    def transfer(self, state, c):
        index, length = state
        while index != 0 and c not in self.next[index]:
            index = self.link[index]
            length = self.length[index]
        return (self.next[index][c], length + 1) if c in self.next[index] else (0, 0)

    def add_tokens(self, tokens):
        for c in tokens:
            self.cur = self.transfer(self.cur, c)
            self._add(c)

    def to_anc(self, index, n_predicts):
        if index != 0:
            while (
                self.link[index] != 0
                and n_predicts > len(self.input_ids) - 1 - self.min_endpos[index]
            ):
                index = self.link[index]
        return index

    def draft(self, index, n):
        e = self.min_endpos[index]
        return self.input_ids[e + 1 : e + n]  # unpadded (the official code pads with 0)


def official_samd(corpus_docs, eos, text, cfg: SamSelectConfig):
    """The official `samd` step for committed text `text` (root = text[-1]): ("sequence", chain)
    or ("tree", None)."""
    static = OfficialSam()
    for doc in corpus_docs:
        static.add_tokens(doc if doc[-1] == eos else doc + [eos])
    static.cur = (0, 0)
    for c in text[:-1]:
        static.cur = static.transfer(static.cur, c)
    dyn = OfficialSam()
    dyn.add_tokens(text[:-1])
    i_dyn, m_dyn = dyn.transfer(dyn.cur, text[-1])
    i_static, m_static = static.transfer(static.cur, text[-1])
    m_static -= cfg.l_bias
    if max(m_dyn, m_static) >= cfg.l_threshold:
        if m_dyn >= m_static:
            return "dynamic", dyn.draft(dyn.to_anc(i_dyn, cfg.n_predicts), cfg.n_predicts)
        return "static", static.draft(i_static, cfg.n_predicts)
    return "tree", None


def _pipeline(docs, vocab, eos, texts, cfg, max_nodes):
    """samgpu: static prefill + dynamic prefill over the whole committed texts, then the chain."""
    index = SamIndex.build(docs, vocab_size=vocab, eos_id=eos)
    static = StaticAutomaton.from_index(index, "cpu")
    matches = static.new_matches(len(texts))
    prompts, lens = pad_rows(texts)
    static.prefill(matches, prompts, lens)
    dyn = DynamicAutomata(len(texts), max(len(t) for t in texts) + 4, vocab, "cpu")
    dyn.prefill(prompts, lens)
    tree = DraftTree.empty(len(texts), max_nodes, "cpu")
    roots = i32([t[-1] for t in texts])
    source, chain_len = sam_draft_chain(static, matches, dyn, roots, tree, cfg)
    return tree, source.tolist(), chain_len.tolist()


@pytest.mark.parametrize("alphabet", [3, 6])
def test_sam_tr_matches_official_semantics(alphabet):
    """Random corpus and 24 committed texts: the same source as the official rule, and the same
    chain tokens (ours may add the root as one last token, see the module docstring)."""
    gen = torch.Generator().manual_seed(alphabet)
    vocab, eos = alphabet + 1, alphabet
    docs = [random_text(gen, 60, alphabet) for _ in range(3)]
    texts = [random_text(gen, int(torch.randint(2, 70, (1,), generator=gen)), alphabet)]
    texts += [docs[k % 3][k : k + 20 + k] + random_text(gen, k, alphabet) for k in range(23)]
    cfg = SamSelectConfig(l_threshold=3, n_predicts=12, stop_at_eos=False)
    # official corpus: the docs, then every id as a one-token document (as gen_sam_*.py)
    official_docs = docs + [[v] for v in range(vocab)]
    tree, source, chain_len = _pipeline(docs, vocab, eos, texts, cfg, 12)
    names = {SOURCE_STATIC: "static", SOURCE_DYNAMIC: "dynamic", SOURCE_FALLBACK: "tree"}
    seen = set()
    for b, text in enumerate(texts):
        kind, chain = official_samd(official_docs, eos, text, cfg)
        ours = tree.tokens[b, 1 : 1 + chain_len[b]].tolist()
        if kind != "tree" and not chain:
            assert names[source[b]] == "tree"  # official would draft zeros; we fall back
            continue
        assert names[source[b]] == kind, (b, text)
        seen.add(kind)
        if kind != "tree":
            assert ours[: len(chain)] == chain, (b, kind)
            extra = ours[len(chain) :]
            assert extra in ([], [text[-1]]), (b, extra)
    assert seen == {"static", "dynamic", "tree"}


def test_sam_only_dynamic_chain_matches_official_semantics():
    """`sam` alone (samd_sam_only) with the dynamic automaton: n = min(60, 1 + int(4 * len)) nodes,
    no climbing, the chain input_ids[endpos + 1 : endpos + n] (its static side is a count-ranked
    tree, kernels/sam_tree.py, not compared here)."""
    gen = torch.Generator().manual_seed(11)
    texts = [random_text(gen, int(torch.randint(2, 80, (1,), generator=gen)), 3) for _ in range(12)]
    texts += [t[:30] * 3 for t in texts[:4]]
    dyn = DynamicAutomata(len(texts), 256, 4, "cpu")
    dyn.prefill(*pad_rows(texts))
    tree = DraftTree.empty(len(texts), 64, "cpu")
    cfg = SamSelectConfig.sam_only()
    _, chain_len = sam_draft_chain(None, None, dyn, i32([t[-1] for t in texts]), tree, cfg)
    for b, text in enumerate(texts):
        official = OfficialSam()
        official.add_tokens(text[:-1])
        index, length = official.transfer(official.cur, text[-1])
        n = min(60, 1 + int(length * 4.0))
        chain = official.draft(index, n) if length > 0 else []
        ours = tree.tokens[b, 1 : 1 + chain_len[b].item()].tolist()
        assert ours[: len(chain)] == chain and ours[len(chain) :] in ([], [text[-1]]), b


def test_dynamic_draft_on_periodic_text_is_exact():
    """Decode-loop simulation on a periodic text: after one period every dynamic draft is exactly
    the continuation, so a greedy verifier accepts all of it. Steps feed the accepted tokens back
    (dispatch: references on CPU)."""
    period = [5, 3, 8, 1, 9, 2, 7]
    full = period * 8
    dyn = DynamicAutomata(1, 64, 10, "cpu")
    dyn.prefill(i32([full[:8]]), i32([8]))
    cfg = SamSelectConfig(mode="dynamic", n_predicts=6)
    tree = DraftTree.empty(1, 6, "cpu")
    pos = 8
    while pos + 6 < len(full):
        sam_draft_chain(None, None, dyn, i32([full[pos - 1]]), tree, cfg)
        n = tree.num_nodes.item() - 1
        assert tree.tokens[0, 1 : 1 + n].tolist() == full[pos : pos + n] and n == 5
        accepted = full[pos : pos + n + 1]  # the draft + the bonus token
        dyn.extend(i32([accepted]), i32([len(accepted)]))
        pos += len(accepted)


def test_static_automaton_from_index_and_prefill():
    """Arrays land on the device unchanged; prefill resets the first B matches and matches whole
    texts exactly as the host index does (tokenized real text)."""
    texts = real_texts(5, 80)
    vocab = max(max(t) for t in texts) + 2
    index = SamIndex.build(texts[:3], vocab_size=vocab, eos_id=vocab - 1)
    static = StaticAutomaton.from_index(index, "cpu")
    for name in ("length", "link", "endpos", "count", "edge_offsets", "root_next"):
        assert torch.equal(getattr(static, name), getattr(index, name))
    # edge labels as uint16 (the vocabulary fits), same values
    assert static.edge_token.dtype == torch.uint16
    assert torch.equal(static.edge_token.to(torch.int32), index.edge_token)
    assert static.vocab_size == vocab and static.eos_id == vocab - 1
    assert static.num_tokens == index.num_tokens and static.nbytes > 0
    slim = StaticAutomaton.from_index(index, "cpu", with_count=False)
    assert slim.count.numel() == 0 and slim.nbytes == static.nbytes - 4 * index.num_states
    wide = StaticAutomaton.from_index(index, "cpu", compact_edges=False)
    assert wide.edge_token.dtype == torch.int32 and torch.equal(wide.edge_token, index.edge_token)
    assert wide.nbytes == static.nbytes + 2 * index.num_edges
    matches = static.new_matches(4)
    matches.state.fill_(3), matches.match_len.fill_(9)
    queries = [texts[3], texts[0][10:60], texts[4][:1]]
    static.prefill(matches, *pad_rows(queries))
    for b, q in enumerate(queries):
        state, n = matches.state[b].item(), matches.match_len[b].item()
        assert (n, index.endpos[state].item()) == index.longest_match(q)
    assert (matches.state[3].item(), matches.match_len[3].item()) == (3, 9)  # untouched
    matches.reset()
    assert matches.state.tolist() == [0] * 4 and matches.match_len.tolist() == [0] * 4


def test_static_bad_index_and_prompts():
    index = SamIndex.build([[1, 2]], vocab_size=4, eos_id=3)
    index.length = index.length.long()
    with pytest.raises(ValueError, match="index.length must be a 1-D int32 tensor"):
        StaticAutomaton.from_index(index, "cpu")
    static = StaticAutomaton.from_index(SamIndex.build([[1, 2]], vocab_size=4, eos_id=3), "cpu")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        static.prefill(static.new_matches(1), i32([[1, 7]]), i32([2]))
    with pytest.raises(ValueError, match="only 1 slots"):
        static.prefill(static.new_matches(1), i32([[1], [2]]), i32([1, 1]))


def test_dynamic_prefill_resets_slots():
    """A second prefill (next batch) gives the same live automata as a fresh object (states below
    num_states, edges below num_edges, the whole table; stale entries past them are never read);
    slots past the batch keep their content; the memory figure matches the docstring."""
    a = DynamicAutomata(3, 32, 6, "cpu")
    a.prefill(*pad_rows([[1, 2, 1, 2, 3], [4, 4, 4], [5, 1]]))
    kept = a.tokens[2].clone(), a.num_states[2].item()
    a.prefill(*pad_rows([[3, 3, 1], [2]]))
    fresh = DynamicAutomata(2, 32, 6, "cpu")
    fresh.prefill(*pad_rows([[3, 3, 1], [2]]))
    for name in ("hash", "num_states", "num_edges", "text_len", "match_state", "match_len"):
        assert torch.equal(getattr(a, name)[:2], getattr(fresh, name)), name
    for b in range(2):
        ns, ne = fresh.num_states[b].item(), fresh.num_edges[b].item()
        for name in ("length", "link", "endpos", "first_edge"):
            assert torch.equal(getattr(a, name)[b, :ns], getattr(fresh, name)[b, :ns]), name
        for name in ("edge_next", "edge_slot"):
            assert torch.equal(getattr(a, name)[b, :ne], getattr(fresh, name)[b, :ne]), name
    assert torch.equal(a.tokens[2], kept[0]) and a.num_states[2].item() == kept[1]
    assert 108 <= a.bytes_per_token <= 156 + 8 and a.matches.match_len is a.match_len
    assert isinstance(a.matches, Matches)


def _live_equal(a: DynamicAutomata, row: int, fresh: DynamicAutomata, frow: int) -> None:
    """Slot `row` of `a` holds the same automaton as slot `frow` of `fresh` (live entries only:
    states, edges and text past the counts are scratch that the kernels overwrite)."""
    for name in ("hash", "num_states", "num_edges", "text_len", "last", "match_state", "match_len"):
        assert torch.equal(getattr(a, name)[row], getattr(fresh, name)[frow]), name
    ns, ne, nt = (int(getattr(fresh, n)[frow]) for n in ("num_states", "num_edges", "text_len"))
    for name, n in (("length", ns), ("link", ns), ("endpos", ns), ("first_edge", ns)):
        assert torch.equal(getattr(a, name)[row, :n], getattr(fresh, name)[frow, :n]), name
    for name in ("edge_next", "edge_slot"):
        assert torch.equal(getattr(a, name)[row, :ne], getattr(fresh, name)[frow, :ne]), name
    assert torch.equal(a.tokens[row, :nt], fresh.tokens[frow, :nt])


def test_start_rows_rebuilds_only_those_slots():
    """Continuous batching: start_rows on slots [2, 0] (in place: reset, then build over the
    batch's text with length 0 on the other rows) gives exactly the automata / matches of a fresh
    prefill of those prompts, and slot 1 keeps what it had (dynamic and static)."""
    gen = torch.Generator().manual_seed(3)
    docs = [random_text(gen, 60, 4) for _ in range(3)]
    static = StaticAutomaton.from_index(SamIndex.build(docs, vocab_size=6, eos_id=5), "cpu")
    first = [[1, 2, 1, 2, 3], [4, 4, 4, 0, 1], [0, 1]]
    new = [[3, 3, 1, 0, 2, 3], [2]]  # into slots 2 and 0
    dyn = DynamicAutomata(3, 32, 6, "cpu")
    dyn.prefill(*pad_rows(first))
    matches = static.new_matches(3)
    static.prefill(matches, *pad_rows(first))
    before = {n: t[1].clone() for n, t in vars(dyn).items() if isinstance(t, torch.Tensor)}
    kept = matches.state[1].item(), matches.match_len[1].item()
    rows = torch.tensor([2, 0])
    text, lengths = pad_rows([new[1], [4, 4], new[0]])  # row 1's text is ignored (length 0)
    lengths[1] = 0
    dyn.start_rows(rows, text, lengths)
    static.start_rows(matches, rows, text, lengths)
    fresh = DynamicAutomata(2, 32, 6, "cpu")
    fresh.prefill(*pad_rows(new))
    fresh_matches = static.new_matches(2)
    static.prefill(fresh_matches, *pad_rows(new))
    for row, frow in ((2, 0), (0, 1)):
        _live_equal(dyn, row, fresh, frow)
    for name, t in vars(dyn).items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(t[1], before[name]), name
    assert torch.equal(matches.state[rows], fresh_matches.state)
    assert torch.equal(matches.match_len[rows], fresh_matches.match_len)
    assert (matches.state[1].item(), matches.match_len[1].item()) == kept
    assert int(fresh_matches.match_len.max()) > 0  # the matches are not all trivial


def test_start_rows_negative_control():
    """The live-entry comparison can fail: a slot built from another prompt differs."""
    dyn = DynamicAutomata(2, 32, 6, "cpu")
    dyn.prefill(*pad_rows([[1, 2, 1, 2, 3], [4, 4]]))
    fresh = DynamicAutomata(1, 32, 6, "cpu")
    fresh.prefill(*pad_rows([[1, 2, 1, 2, 4]]))
    with pytest.raises(AssertionError):
        _live_equal(dyn, 0, fresh, 0)


def _earlier_match_brute_force(text: list[int]) -> tuple[int, int]:
    """Longest suffix of text also ending at an earlier position, and its earliest end."""
    for length in range(len(text) - 1, 0, -1):
        suffix = text[len(text) - length :]
        for end in range(length - 1, len(text) - 1):
            if text[end - length + 1 : end + 1] == suffix:
                return length, end
    return 0, -1


@settings(max_examples=60, deadline=None)
@given(
    text=st.lists(st.integers(0, 2), min_size=1, max_size=40),
    cuts=st.lists(st.integers(0, 6), min_size=1, max_size=8),
)
def test_dynamic_match_property(text, cuts):
    """Any text over 3 symbols, fed as a prompt then in arbitrary steps: after every step the
    match is the longest suffix that ends earlier, at its earliest end (brute-force substring
    search, no automaton involved)."""
    auto = DynamicAutomata(1, 48, 3, "cpu")
    first = cuts[0] % (len(text) + 1)
    auto.prefill(i32([text[:first] or [0]]), i32([first]))
    fed = first
    for k in [*cuts[1:], len(text)]:
        chunk = text[fed : fed + k]
        if chunk:
            auto.extend(i32([chunk]), i32([len(chunk)]))
        fed += len(chunk)
        state = auto.match_state[0].item()
        got = (auto.match_len[0].item(), auto.endpos[0, state].item() if state else -1)
        assert got == _earlier_match_brute_force(text[:fed])
