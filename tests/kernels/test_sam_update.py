"""sam_update: static matches, dynamic automata and store matches advanced in one launch give
exactly what the separate kernels give (every array compared), with any automaton alone too."""

import pytest
import torch

from samgpu.automata import DynamicAutomata, StaticAutomaton, StoreAutomaton
from samgpu.kernels.sam_dynamic import FIELDS_EDGE, FIELDS_SLOT, FIELDS_STATE
from samgpu.kernels.sam_update import sam_update, sam_update_ref, sam_update_triton
from samgpu.sam import SamIndex
from tests.kernels._sam_common import i32, pad_rows, random_text

ALL_FIELDS = FIELDS_STATE + FIELDS_EDGE + FIELDS_SLOT + ("hash", "tokens")


def _setup(num_reqs, gen, device):
    vocab, eos = 5, 4
    docs = [random_text(gen, 50, 3) for _ in range(2)]
    static = StaticAutomaton.from_index(SamIndex.build(docs, vocab_size=vocab, eos_id=eos), device)
    prompts = [
        random_text(gen, int(torch.randint(0, 30, (1,), generator=gen)), 3) for _ in range(num_reqs)
    ]
    pairs = []
    for _ in range(2):
        dyn = DynamicAutomata(num_reqs, 64, vocab, device)
        dyn.reset()
        sam_update_ref(None, None, dyn, *[t.to(device) for t in pad_rows(prompts)])
        matches = static.new_matches(num_reqs)
        sam_update_ref(static, matches, None, *[t.to(device) for t in pad_rows(prompts)])
        pairs.append((dyn, matches))
    return static, pairs


@pytest.mark.parametrize("num_reqs", [1, 3, 8])
@pytest.mark.parametrize("which", ["both", "static", "dynamic"])
def test_fused_equals_separate(num_reqs, which, device):
    """Three ragged steps (0..5 tokens each) through the fused kernel and through the references."""
    gen = torch.Generator().manual_seed(num_reqs)
    static, ((dyn_t, m_t), (dyn_r, m_r)) = _setup(num_reqs, gen, device)
    use_s, use_d = which in ("both", "static"), which in ("both", "dynamic")
    for _ in range(3):
        rows = [
            random_text(gen, int(torch.randint(0, 6, (1,), generator=gen)), 3)
            for _ in range(num_reqs)
        ]
        new_tokens, num_new = (t.to(device) for t in pad_rows(rows, 6))
        for impl, dyn, m in ((sam_update_triton, dyn_t, m_t), (sam_update_ref, dyn_r, m_r)):
            impl(
                static if use_s else None,
                m if use_s else None,
                dyn if use_d else None,
                new_tokens,
                num_new,
            )
        for f in ALL_FIELDS:
            assert torch.equal(getattr(dyn_t, f), getattr(dyn_r, f)), f
        assert torch.equal(m_t.state, m_r.state) and torch.equal(m_t.match_len, m_r.match_len)


def test_dispatch_and_bad_inputs():
    static = StaticAutomaton.from_index(SamIndex.build([[1, 2, 3]], vocab_size=5, eos_id=4), "cpu")
    dyn = DynamicAutomata(1, 8, 5, "cpu")
    dyn.reset()
    m = static.new_matches(1)
    sam_update(static, m, dyn, i32([[1, 2]]), i32([2]))
    assert m.match_len.tolist() == [2] and dyn.text_len.tolist() == [2]
    with pytest.raises(ValueError, match="needs a static automaton, a dynamic one, a store"):
        sam_update_triton(None, None, None, i32([[1]]), i32([1]))
    with pytest.raises(ValueError, match="together"):
        sam_update_triton(static, None, dyn, i32([[1]]), i32([1]))
    with pytest.raises(ValueError, match="only 1 dynamic automaton slots"):
        sam_update_triton(None, None, dyn, i32([[1], [2]]), i32([1, 1]))


STORE_FIELDS = ("match_state", "match_len")


@pytest.mark.parametrize("num_reqs", [1, 3])
@pytest.mark.parametrize("which", ["all", "store", "dynamic+store"])
def test_fused_with_store_equals_separate(num_reqs, which, device):
    """The store's two match walks in the same launch (2B more programs): every dynamic array, the
    static matches and both generations' store matches equal the references'; the store (two
    generations, two rotations) is read only."""
    gen = torch.Generator().manual_seed(10 + num_reqs)
    static, ((dyn_t, m_t), (dyn_r, m_r)) = _setup(num_reqs, gen, device)
    stores = [StoreAutomaton(num_reqs, 24, 5, device) for _ in range(2)]
    docs = [random_text(gen, 15, 3) for _ in range(3)]
    for st in stores:
        st.append_docs(docs)
    assert int(stores[0].num_rotations[0]) == 2
    use_s, use_d = which == "all", which != "store"
    for _ in range(3):
        rows = [
            random_text(gen, int(torch.randint(0, 6, (1,), generator=gen)), 3)
            for _ in range(num_reqs)
        ]
        new_tokens, num_new = (t.to(device) for t in pad_rows(rows, 6))
        for impl, dyn, m, st in (
            (sam_update_triton, dyn_t, m_t, stores[0]),
            (sam_update_ref, dyn_r, m_r, stores[1]),
        ):
            impl(
                static if use_s else None,
                m if use_s else None,
                dyn if use_d else None,
                new_tokens,
                num_new,
                store=st,
            )
        for f in ALL_FIELDS:
            assert torch.equal(getattr(dyn_t, f), getattr(dyn_r, f)), f
        assert torch.equal(m_t.state, m_r.state) and torch.equal(m_t.match_len, m_r.match_len)
        for f in STORE_FIELDS:
            assert torch.equal(getattr(stores[0], f), getattr(stores[1], f)), f
    assert int(stores[0].match_len.max()) > 0
