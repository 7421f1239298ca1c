"""The cross-request store (kernels/sam_store.py, sam_store_match.py): Triton == reference on every
array after every launch; matches against a brute-force substring oracle while the store grows
and rotates; the eviction rule (two generations, oldest dropped) against its host twin; golden
cases of the docstring; a negative control for each checker."""

import pytest
import torch

from samgpu.automata import StoreAutomaton
from samgpu.drafters.parts.store_file import surviving_start
from samgpu.kernels._sam_store_jit import find_py, scalars
from samgpu.kernels.sam_store import (
    max_capacity,
    packing,
    sam_store_append,
    sam_store_append_ref,
    sam_store_append_triton,
)
from samgpu.kernels.sam_store_match import (
    sam_store_match,
    sam_store_match_ref,
    sam_store_match_triton,
)
from tests.kernels._sam_common import i32, pad_rows, random_text

FIELDS = (
    "length", "link", "endpos", "first_edge", "edge_next", "edge_slot", "hash", "tokens",
    "num_states", "num_edges", "last", "text_len", "num_docs", "active", "num_rotations",
    "match_state", "match_len",
)  # fmt: skip


def _docs_args(docs: list[list[int]], device, lead: int = 1):
    """Documents as rows of a padded text (each behind `lead` junk tokens, so starts are
    non-zero) in a shuffled row order: (text, rows, starts, ends)."""
    width = max([len(d) for d in docs] + [0]) + lead + 1
    text = torch.full((len(docs), width), 7, dtype=torch.int32)
    order = list(reversed(range(len(docs))))  # doc i lives in row order[i]
    for i, d in enumerate(docs):
        text[order[i], lead : lead + len(d)] = i32(d) if d else text[0, :0]
    rows = torch.tensor(order, dtype=torch.int64)
    starts = i32([lead] * len(docs))
    ends = i32([lead + len(d) for d in docs])
    return text.to(device), rows.to(device), starts.to(device), ends.to(device)


def _same(a: StoreAutomaton, b: StoreAutomaton) -> None:
    for f in FIELDS:
        assert torch.equal(getattr(a, f).cpu(), getattr(b, f).cpu()), f


def _gen_text(store: StoreAutomaton, g: int) -> list[int]:
    return store.tokens[g, : int(store.text_len[g])].tolist()


def _occurrences(text: list[int], s: list[int]) -> list[int]:
    """End positions of s in text (brute force)."""
    n = len(s)
    return [i + n - 1 for i in range(len(text) - n + 1) if text[i : i + n] == s]


def oracle_step(text: list[int], seq: list[int], prev_len: int) -> int:
    """The match length after the last token of `seq`: the longest suffix, no longer than
    prev_len + 1, that occurs in `text` (the store semantics of kernels/sam_store.py)."""
    for n in range(min(prev_len + 1, len(seq)), 0, -1):
        if _occurrences(text, seq[-n:]):
            return n
    return 0


def check_matches(store: StoreAutomaton, seqs: list[list[int]]) -> None:
    """Each sequence's match in each generation is sound: its string (the last match_len tokens)
    ends first at endpos[state] in the generation text, and fits the state (<= length)."""
    for g in range(2):
        text = _gen_text(store, g)
        for b, seq in enumerate(seqs):
            n, s = int(store.match_len[g, b]), int(store.match_state[g, b])
            if n == 0:
                continue
            occ = _occurrences(text, seq[-n:])
            assert occ, (g, b, "match string does not occur")
            assert int(store.endpos[g, s]) == occ[0], (g, b, "not the earliest end position")
            assert n <= int(store.length[g, s]), (g, b, "longer than its state")


def _run_both(pair, op, *args):
    fn_t, fn_r = op
    fn_t(pair[0], *args)
    fn_r(pair[1], *args)
    _same(*pair)


APPEND = (sam_store_append_triton, sam_store_append_ref)
MATCH = (sam_store_match_triton, sam_store_match_ref)


def test_golden_docstring_example(device):
    """V = 5 (SEP 5), C = 8: doc "1 2 3" -> text "1 2 3 5"; a sequence ending in "1 2" matches 2
    (endpos 1) and would draft "3". Doc "4 4 4 4" does not fit (4 + 5 > 8): generation 1 is
    emptied and takes it; generation 0 stays as it was (queried)."""
    st = StoreAutomaton(1, 8, 5, device)
    st.append_docs([[1, 2, 3]])
    assert _gen_text(st, 0) == [1, 2, 3, 5] and st.num_docs.tolist() == [1, 0]
    sam_store_match(st, i32([[7, 1, 2]]).to(device), i32([3]).to(device))
    s = int(st.match_state[0, 0])
    assert (int(st.match_len[0, 0]), int(st.endpos[0, s])) == (2, 1)
    st.append_docs([[4, 4, 4, 4]])
    assert st.active.tolist() == [1] and st.num_rotations.tolist() == [1]
    assert _gen_text(st, 0) == [1, 2, 3, 5] and _gen_text(st, 1) == [4, 4, 4, 4, 5]
    assert [d.tolist() for d in st.documents()] == [[1, 2, 3], [4, 4, 4, 4]]


@pytest.mark.parametrize("capacity", [9, 24, 64])
def test_random_appends_and_matches_vs_reference_and_oracle(capacity, device):
    """Rounds of 0-3 documents over alphabets of 2-3 (many clones), then 0-4 new tokens for each
    of 3 sequences: every array of Triton == reference after every launch (rotations included,
    capacity 9 rotates almost every round); every match length equals the oracle's token by token,
    and is sound (earliest end position)."""
    gen = torch.Generator().manual_seed(capacity)
    V = 4
    pair = [StoreAutomaton(3, capacity, V, device) for _ in range(2)]
    seqs: list[list[int]] = [[], [], []]
    lens = [[0, 0, 0], [0, 0, 0]]  # oracle match lengths per generation and sequence
    for _ in range(8):
        k = int(torch.randint(0, 4, (1,), generator=gen))
        docs = [
            random_text(gen, int(torch.randint(0, 12, (1,), generator=gen)), 3) for _ in range(k)
        ]
        before = int(pair[0].num_rotations[0])
        if docs:
            _run_both(pair, APPEND, *_docs_args(docs, device))
        rotations = int(pair[0].num_rotations[0]) - before
        for g in range(2):  # an emptied generation's matches restart at the root
            if rotations >= 2 or (rotations == 1 and int(pair[0].active[0]) == g):
                lens[g] = [0, 0, 0]
                assert pair[0].match_len[g].tolist() == lens[g]
        rows = [random_text(gen, int(torch.randint(0, 5, (1,), generator=gen)), 3) for _ in seqs]
        for i in range(max(len(r) for r in rows)):  # the oracle, token by token
            for b, r in enumerate(rows):
                if i < len(r):
                    seqs[b].append(r[i])
                    for g in range(2):
                        lens[g][b] = oracle_step(_gen_text(pair[0], g), seqs[b], lens[g][b])
        new_tokens, num_new = pad_rows(rows, 5)
        _run_both(pair, MATCH, new_tokens.to(device), num_new.to(device))
        for g in range(2):
            assert pair[0].match_len[g].tolist() == lens[g]
        check_matches(pair[0], seqs)
    assert int(pair[0].num_states.max()) < 2 * capacity
    assert int(pair[0].num_edges.max()) <= 3 * capacity


def _advance_without_normalising(store: StoreAutomaton, g: int, b: int, c: int) -> int:
    """Negative control: the match advance minus its normalising climb (host)."""
    k = scalars(store)
    table, length, link = store.hash[g].cpu(), store.length[g], store.link[g]
    state, n = int(store.match_state[g, b]), int(store.match_len[g, b])
    _, e = find_py(table, state, c, k["t_bits"], k["s_bits"], k["h_shift"])
    while e == -1 and state != 0:
        state = int(link[state])
        n = int(length[state])
        _, e = find_py(table, state, c, k["t_bits"], k["s_bits"], k["h_shift"])
    return n + 1 if e != -1 else 0


def test_live_match_normalised_after_a_clone(device):
    """Store "x a b": a sequence ending in "z b" matches "b" (length 1) in the state {"x a b",
    "a b", "b"}. Appending "a b c" splits that state: a clone {"a b", "b"} (length 2) takes "b".
    Advancing by "c", the match must first climb to the clone (normalisation), which has "c":
    "b c", length 2 (the oracle's). Negative control: without the climb, the miss in {"x a b"}
    climbs to the clone with match_len = length[clone] = 2 and claims "a b c" (3), which the
    sequence "z b c" does not end with."""
    x, a, b, c, z = 0, 1, 2, 3, 4
    st = StoreAutomaton(1, 32, 5, device)
    st.append_docs([[x, a, b]])
    sam_store_match(st, i32([[z, b]]).to(device), i32([2]).to(device))
    q = int(st.match_state[0, 0])
    assert int(st.match_len[0, 0]) == 1 and int(st.length[0, q]) == 3
    st.append_docs([[a, b, c]])
    assert int(st.length[0, int(st.link[0, q])]) == 2  # q was split
    assert oracle_step(_gen_text(st, 0), [z, b, c], 1) == 2
    assert _advance_without_normalising(st, 0, 0, c) == 3  # the bug the climb prevents
    sam_store_match(st, i32([[c]]).to(device), i32([1]).to(device))
    assert int(st.match_len[0, 0]) == 2
    check_matches(st, [[z, b, c]])


def test_check_matches_negative_controls(device):
    """The soundness checker catches a planted wrong length and a planted wrong state."""
    st = StoreAutomaton(1, 16, 4, device)
    st.append_docs([[0, 1, 2, 0, 1]])
    seq = [3, 0, 1]
    sam_store_match(st, i32([seq]).to(device), i32([3]).to(device))
    check_matches(st, [seq])
    st.match_len[0, 0] = 3  # "3 0 1" does not occur
    with pytest.raises(AssertionError, match="does not occur"):
        check_matches(st, [seq])
    st.match_len[0, 0] = 2
    st.match_state[0, 0] = 1  # the state of "0": wrong end position and too short
    with pytest.raises(AssertionError):
        check_matches(st, [seq])


@pytest.mark.parametrize("capacity", [6, 13, 40])
def test_eviction_rule_matches_host_twin(capacity, device):
    """Documents of random lengths (some longer than C - 1, cut to C - 1; some empty, skipped):
    the device keeps exactly the documents the host rule `surviving_start` keeps, oldest first,
    and the store holds at most 2C tokens."""
    gen = torch.Generator().manual_seed(capacity)
    st = StoreAutomaton(2, capacity, 6, device)
    docs = [
        random_text(gen, int(torch.randint(0, capacity + 4, (1,), generator=gen)), 5)
        for _ in range(20)
    ]
    for lo in range(0, 20, 3):  # in several launches
        st.append(*_docs_args(docs[lo : lo + 3], device))
    kept = [d[: capacity - 1] for d in docs[surviving_start([len(d) for d in docs], capacity) :]]
    assert [d.tolist() for d in st.documents()] == [d for d in kept if d]
    assert int(st.text_len.sum()) <= 2 * capacity
    assert int(st.num_rotations[0]) >= 1


def test_rotation_resets_matches_of_the_emptied_generation(device):
    """Generation 0 full, a sequence matched in both; the next rotation empties generation 1 (the
    older): its matches go to the root, generation 0's stay."""
    st = StoreAutomaton(2, 6, 4, device)
    st.append_docs([[0, 1, 2, 3]])  # gen 0: 5 tokens
    st.append_docs([[1, 2]])  # does not fit: gen 1
    sam_store_match(st, i32([[0, 1, 2], [1, 2, 2]]).to(device), i32([3, 2]).to(device))
    assert st.match_len[0].tolist() == [3, 2] and st.match_len[1].tolist() == [2, 2]
    st.append_docs([[3, 3, 3, 3]])  # gen 1 holds 3 of 6: does not fit -> gen 0 emptied
    assert st.active.tolist() == [0] and st.num_rotations.tolist() == [2]
    assert st.match_len[0].tolist() == [0, 0] and st.match_len[1].tolist() == [2, 2]


def test_packing_limits_and_validation(device):
    """2 s_bits + t_bits <= 63: the default 2M-token generation fits SmolLM2's 49,152 ids (60
    bits) and Qwen's 151,936 (62); beyond max_capacity it is a ValueError naming the budget."""
    assert packing(1 << 21, 49152) == (16, 22)
    assert packing(1 << 21, 151936) == (18, 22)
    assert max_capacity(49152) == 1 << 22
    with pytest.raises(ValueError, match="lower store_tokens"):
        packing(max_capacity(49152) * 2, 49152)
    with pytest.raises(ValueError, match="capacity"):
        StoreAutomaton(1, 1, 4, device)
    st = StoreAutomaton(1, 8, 4, device)
    with pytest.raises(ValueError, match="outside"):
        st.append_docs([[4]])
    with pytest.raises(ValueError, match="new_tokens"):
        sam_store_match(st, i32([1, 2]), i32([1]))
    with pytest.raises(ValueError, match="batch of 2"):
        sam_store_match_triton(st, i32([[1], [2]]).to(device), i32([1, 1]).to(device))
    with pytest.raises(ValueError, match="rows"):
        sam_store_append(st, i32([[1]]).to(device), i32([0]).to(device), i32([0]), i32([1]))


def test_bytes_per_token():
    """92 bytes per token of capacity when C is a power of two (H = 4C), plus the matches."""
    st = StoreAutomaton(4, 1024, 100, "cpu")
    assert 92 <= st.bytes_per_token < 92.1
