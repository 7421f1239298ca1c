"""SamIndex construction against brute-force substring oracles (DESIGN.md §3).

The spec: text = documents each followed by EOS, then every id as a one-token document; for every
state, its longest string w = tokens[endpos - length + 1 : endpos + 1] has its FIRST occurrence
ending at endpos, occurs `count` times, and the state's edges are exactly the tokens that follow w
somewhere in the text. longest_match(q) = longest suffix of q occurring in the text, with the end
of its earliest occurrence. Small alphabets (2-4 ids) force many repeats and clones.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samgpu.sam import NO_POSITION, NO_STATE, SamIndex

from ._brute import end_positions, expected_text, followers, longest_suffix_match


def cases(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def small_corpora(draw, max_vocab: int = 4, max_doc: int = 14, max_docs: int = 4):
    vocab_size = draw(st.integers(2, max_vocab))
    eos_id = draw(st.integers(0, vocab_size - 1))
    docs = draw(
        st.lists(
            st.lists(st.integers(0, vocab_size - 1), max_size=max_doc),
            min_size=1,
            max_size=max_docs,
        ).filter(lambda ds: any(ds))
    )
    return vocab_size, eos_id, docs


# --------------------------------------------------------------------------- golden, by hand
def test_worked_example_text_matches_counts():
    """docs [[0, 1, 0]], V = 2, EOS = 1 -> text 0 1 0 1 | 0 1 | 1 (positions 0..6).
    "1 0" ends at 2 and 4 -> (2, 2); "1 1" only at 6; "0 0" never, so its suffix "0" (first at 0);
    the whole text matches itself. "0 1" ends at 1, 3, 5 -> count 3; "1" occurs 4 times."""
    index = SamIndex.build([[0, 1, 0]], vocab_size=2, eos_id=1)
    assert index.tokens.tolist() == [0, 1, 0, 1, 0, 1, 1]
    assert index.longest_match([1, 0]) == (2, 2)
    assert index.longest_match([1, 1]) == (2, 6)
    assert index.longest_match([0, 0]) == (1, 0)
    assert index.longest_match([0, 1, 0, 1, 0, 1, 1]) == (7, 6)
    assert index.longest_match([]) == (0, NO_POSITION)
    state, match_len = index.match_state([0, 1])
    assert match_len == 2 and index.count[state] == 3
    state, match_len = index.match_state([1])
    assert match_len == 1 and index.count[state] == 4
    assert index.count[0] == 7  # the root: every position ends the empty string
    assert index.link[0] == NO_STATE and index.length[0] == 0 and index.endpos[0] == NO_POSITION
    assert index.root_next[0] == index.match_state([0])[0]
    assert index.root_next[1] == index.match_state([1])[0]


def test_document_already_ending_in_eos_gets_no_second_eos_and_empty_docs_vanish():
    """[[3, 2], [], [4]] with EOS = 2, V = 5 -> 3 2 | 4 2 | 0 2 1 2 2 3 2 4 2."""
    index = SamIndex.build([[3, 2], [], np.array([4])], vocab_size=5, eos_id=2)
    assert index.tokens.tolist() == [3, 2, 4, 2, 0, 2, 1, 2, 2, 3, 2, 4, 2]


# --------------------------------------------------------------------------- properties
@cases(1000)
@given(
    corpus=small_corpora(), queries=st.lists(st.lists(st.integers(0, 3), max_size=9), max_size=6)
)
def test_longest_match_is_longest_suffix_with_earliest_end(corpus, queries):
    vocab_size, eos_id, docs = corpus
    index = SamIndex.build(docs, vocab_size=vocab_size, eos_id=eos_id)
    text = np.asarray(expected_text(docs, vocab_size, eos_id))
    assert index.tokens.tolist() == text.tolist()
    for q in queries:
        q = [t % vocab_size for t in q]
        assert index.longest_match(q) == longest_suffix_match(text, q), q


@cases(800)
@given(corpus=small_corpora())
def test_every_state_endpos_count_and_edges(corpus):
    vocab_size, eos_id, docs = corpus
    index = SamIndex.build(docs, vocab_size=vocab_size, eos_id=eos_id)
    index.validate()
    text = index.tokens.numpy().astype(np.int64)
    length, endpos, count = index.length.tolist(), index.endpos.tolist(), index.count.tolist()
    offsets, etok, edst = (
        t.tolist() for t in (index.edge_offsets, index.edge_token, index.edge_dst)
    )
    assert count[0] == text.size
    seen = set()
    for s in range(1, index.num_states):
        w = text[endpos[s] - length[s] + 1 : endpos[s] + 1]
        ends = end_positions(text, w)
        assert ends[0] == endpos[s], f"state {s}: endpos is not the earliest occurrence"
        assert ends.size == count[s], f"state {s}: count"
        assert index.match_state(w) == (s, length[s])
        # Shorter strings of the state (down to length[link] + 1) share its end positions.
        shortest = w[length[s] - length[index.link[s]] - 1 :]
        assert np.array_equal(end_positions(text, shortest), ends)
        toks = etok[offsets[s] : offsets[s + 1]]
        assert toks == sorted(followers(text, w))
        for tok, dst in zip(toks, edst[offsets[s] : offsets[s + 1]], strict=True):
            assert index.match_state([*w.tolist(), tok]) == (dst, len(w) + 1)
        seen.add(tuple(w.tolist()))
    # One state per distinct end-position class: as many states as distinct longest strings.
    assert len(seen) == index.num_states - 1


@cases(400)
@given(corpus=small_corpora(max_vocab=3, max_doc=10, max_docs=5))
def test_from_text_arrays_equals_streamed_build(corpus):
    vocab_size, eos_id, docs = corpus
    flat = np.array([t for d in docs for t in d], dtype=np.int64)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    a = SamIndex.build(docs, vocab_size=vocab_size, eos_id=eos_id, tokenizer_fingerprint="fp")
    b = SamIndex.from_text_arrays(
        flat, offsets, vocab_size=vocab_size, eos_id=eos_id, tokenizer_fingerprint="fp"
    )
    assert a.equal(b)


@cases(80)
@given(
    ids=st.lists(st.integers(0, 49151), min_size=1, max_size=6, unique=True),
    picks=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=40), min_size=1, max_size=4),
    queries=st.lists(st.lists(st.integers(0, 5), max_size=8), min_size=1, max_size=5),
)
def test_realistic_vocab_few_distinct_ids(ids, picks, queries):
    """SmolLM2-sized vocabulary (49152) with a handful of distinct ids in the documents."""
    vocab_size, eos_id = 49152, 2
    docs = [[ids[i % len(ids)] for i in doc] for doc in picks]
    index = SamIndex.build(docs, vocab_size=vocab_size, eos_id=eos_id)
    text = index.tokens.numpy().astype(np.int64)
    assert text.tolist() == expected_text(docs, vocab_size, eos_id)
    assert index.root_next.shape == (vocab_size,) and (index.root_next.numpy() > 0).all()
    for q in queries:
        q = [ids[i % len(ids)] for i in q]
        expected = longest_suffix_match(text, q)
        assert index.longest_match(q) == expected
        if expected[0]:
            state, match_len = index.match_state(q[len(q) - expected[0] :])
            assert match_len == expected[0]
            assert index.count[state] == end_positions(text, q[len(q) - expected[0] :]).size


def test_chunked_streaming_matches_one_chunk(monkeypatch):
    """Documents crossing the ~1M-token chunk boundary build the same automaton as one chunk."""
    from samgpu.sam import index as index_mod

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 5, size=int(rng.integers(1, 30))) for _ in range(200)]
    whole = SamIndex.build(docs, vocab_size=5, eos_id=0)
    monkeypatch.setattr(index_mod, "_CHUNK_TOKENS", 7)
    chunked = SamIndex.build(docs, vocab_size=5, eos_id=0)
    assert whole.equal(chunked)
    whole.validate()


def test_growing_every_construction_array_changes_nothing(monkeypatch):
    """Tiny initial capacities force every growth path (state records, overflow lists, hash-table
    rehash, text buffer) many times; the automaton must equal a presized build and the oracle."""
    from samgpu.sam import index as index_mod

    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 3, size=int(rng.integers(1, 60))).tolist() for _ in range(40)]
    docs += [rng.integers(0, 40, size=200).tolist()]  # many distinct ids: many overflow edges
    presized = SamIndex.build(docs, vocab_size=40, eos_id=1, expected_tokens=10_000)
    monkeypatch.setattr(index_mod, "_MIN_CAPACITY", 1)
    monkeypatch.setattr(index_mod, "_CHUNK_TOKENS", 5)
    grown = SamIndex.build(docs, vocab_size=40, eos_id=1)
    assert grown.equal(presized)
    grown.validate()
    text = grown.tokens.numpy().astype(np.int64)
    for s in range(1, grown.num_states):
        length, endpos = int(grown.length[s]), int(grown.endpos[s])
        ends = end_positions(text, text[endpos - length + 1 : endpos + 1])
        assert ends[0] == endpos and ends.size == grown.count[s]


def test_stats_sizes():
    index = SamIndex.build([[1, 2, 3, 1, 2]], vocab_size=4, eos_id=0)
    s = index.stats()
    assert (s["tokens"], s["states"], s["edges"]) == (
        index.num_tokens,
        index.num_states,
        index.num_edges,
    )
    arrays = 4 * (4 * index.num_states + index.num_states + 1 + 2 * index.num_edges)
    assert s["bytes"] == arrays + 4 * index.vocab_size + 4 * index.num_tokens
    assert s["bytes_no_root"] == s["bytes"] - 4 * index.vocab_size
    assert s["bytes_per_token"] == pytest.approx(s["bytes"] / s["tokens"], rel=1e-3)


# --------------------------------------------------------------------------- progress
def _bars(err: str) -> list[str]:
    """The last state of each tqdm bar written to stderr (a bar redraws after "\r")."""
    lines = [seg.split("\r")[-1] for seg in err.split("\n")]
    return [x for x in lines if x.startswith("SAM build")]


def test_the_build_shows_one_bar_that_ends_at_100_percent(capsys):
    """One bar for the corpus tokens, ending at 100% even when the size estimate was off (here
    half the real count); the vocabulary singletons appended after it get no bar of their own (a
    second bar stuck at a few percent did). Negative control: the check sees two bars and no
    100% in output like the old one."""
    docs = [[1, 2, 3, 1, 2] * 20, [3, 2, 1] * 10]
    SamIndex.build(docs, vocab_size=50, eos_id=0, progress=True, expected_tokens=64)
    bars = _bars(capsys.readouterr().err)
    assert len(bars) == 1 and "100%" in bars[0] and "132/132" in bars[0], bars
    old = "SAM build: 132tok [00:00]\nSAM build:   5%|x| 50/1.00k [00:00]\n"
    assert len(_bars(old)) == 2 and not any("100%" in b for b in _bars(old))
